//! `wake`: a PostgreSQL LISTEN connection (sqlx) whose notifications make the route poll
//! at once instead of at the end of its interval.
//!
//! Notifications only set a [`Notify`] permit, and a permit does not add up: any number of
//! them during a poll cause one more poll. The interval stays as the safety net: while the
//! connection is down the route simply polls on its timer, and after every (re)connect it
//! polls once, since a notification sent meanwhile was lost.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::backoff::Backoff;

/// Where to LISTEN. The URL may carry a password: it is never printed.
#[derive(Clone)]
pub struct WakeSpec {
    pub channel: String,
    pub url: String,
}

impl std::fmt::Debug for WakeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WakeSpec")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// A running listener; dropping it closes the connection.
pub struct Waker {
    notify: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Waker {
    pub fn start(spec: WakeSpec, route: String) -> Waker {
        let notify = Arc::new(Notify::new());
        let task = tokio::spawn(listen(spec, route, notify.clone()));
        Waker { notify, task }
    }

    /// A waker with no connection, woken by hand through the `Notify` returned.
    #[cfg(test)]
    pub fn by_hand() -> (Waker, Arc<Notify>) {
        let notify = Arc::new(Notify::new());
        let task = tokio::spawn(std::future::pending());
        (
            Waker {
                notify: notify.clone(),
                task,
            },
            notify,
        )
    }

    /// Returns once a notification (or a reconnect) arrived since the last return.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps a LISTEN connection, reconnecting with backoff; logs one warning per outage and
/// one info when the connection is back.
async fn listen(spec: WakeSpec, route: String, notify: Arc<Notify>) {
    let mut backoff = Backoff::new();
    let mut outage = false;
    loop {
        match connect(&spec).await {
            Ok(mut listener) => {
                backoff.reset();
                if outage {
                    info!(route = %route, channel = %spec.channel, "wake listener connected again; polling now");
                } else {
                    info!(route = %route, channel = %spec.channel, "wake listener connected");
                }
                notify.notify_one();
                let lost = loop {
                    match listener.try_recv().await {
                        Ok(Some(_)) => notify.notify_one(),
                        Ok(None) => break "connection closed".to_string(),
                        Err(e) => break e.to_string(),
                    }
                };
                outage = true;
                warn!(route = %route, channel = %spec.channel, error = %lost, "wake listener lost; polling every interval until it reconnects");
            }
            Err(e) => {
                if !outage {
                    outage = true;
                    warn!(route = %route, channel = %spec.channel, error = %e, "wake listener cannot connect; polling every interval until it does");
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Connects and LISTENs once, for `check`.
pub async fn probe(spec: &WakeSpec) -> Result<(), String> {
    connect(spec).await.map(drop)
}

/// How long one connect may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(spec: &WakeSpec) -> Result<PgListener, String> {
    let attempt = async {
        let mut listener = PgListener::connect(&spec.url)
            .await
            .map_err(|e| e.to_string())?;
        // Reconnects are ours, with backoff and logs; sqlx's own would be silent.
        listener.eager_reconnect(false);
        // sqlx quotes the channel as an identifier.
        listener
            .listen(&spec.channel)
            .await
            .map_err(|e| e.to_string())?;
        Ok(listener)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(listener)) => Ok(listener),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(why_no_answer(spec).await),
    }
}

/// sqlx's pool retries a refused connection until its deadline and then says only that it
/// timed out; one plain connect tells what is wrong.
async fn why_no_answer(spec: &WakeSpec) -> String {
    use sqlx::Connection;
    let once = sqlx::postgres::PgConnection::connect(&spec.url);
    match tokio::time::timeout(CONNECT_TIMEOUT, once).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) | Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
    }
}
