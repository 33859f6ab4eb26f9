//! The commands: `run`, `check` and `dlq …`, over a loaded configuration.

mod bridge;
mod check;
mod layout;
mod wiring;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::lease::Leases;
use crate::metrics::Metrics;
use crate::state::{Holder, State};

pub use crate::error::AppError;

use bridge::{Bridge, Context};
pub use check::check;
pub use wiring::{db_specs, replay_publishers};

/// `mqdb run`: every route until SIGINT/SIGTERM; SIGHUP reloads the configuration file.
pub async fn run(config: Config) -> Result<(), AppError> {
    run_until(config, shutdown_signal(), Metrics::new()).await
}

/// Every route until `stop` resolves, then drains; the routes report to `metrics`.
pub async fn run_until(
    mut config: Config,
    stop: impl std::future::Future<Output = ()>,
    metrics: Arc<Metrics>,
) -> Result<(), AppError> {
    // First: until it is handled, a SIGHUP would end the process.
    let mut hangups = hangups();
    let brokers = wiring::broker_settings(&config)?;
    let amqp = wiring::amqp_settings(&config)?;
    let paths = brokers
        .iter()
        .map(|(name, s)| (name, s.endpoint(), &s.proxy))
        .chain(amqp.iter().map(|(name, s)| (name, s.endpoint(), &s.proxy)));
    for (name, endpoint, proxy) in paths {
        info!(broker = %name, %endpoint, %proxy, "broker connection path");
    }
    let state = open_state(&config).await?;
    let holder = Holder::this_process(&config.instance_name());
    metrics.set_instance(&holder.instance);
    crate::message::set_instance(&holder.instance);
    info!(instance = %holder.instance, "instance");
    let leases = Leases {
        state: state.clone(),
        holder: holder.clone(),
        ttl: config.lease,
        metrics: metrics.clone(),
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let heartbeat = tokio::spawn(crate::lease::heartbeat(
        state.clone(),
        holder.clone(),
        config.lease / 3,
        metrics.clone(),
        stop_rx.clone(),
    ));
    let mut signals = Box::pin(stop);
    let mut http_server = None;
    if let Some(http) = &config.http {
        let listen = http.addr().map_err(AppError::Usage)?;
        http_server = Some(
            crate::http::serve(listen, metrics.clone(), stop_rx.clone())
                .await
                .map_err(AppError::Runtime)?,
        );
    }
    if !config.log_summary.is_zero() {
        tokio::spawn(crate::http::log_summaries(
            metrics.clone(),
            config.log_summary,
            stop_rx.clone(),
        ));
    }

    let (misconfigured_tx, mut misconfigured) = mpsc::unbounded_channel();
    let context = Context {
        leases,
        misconfigured: misconfigured_tx,
    };
    let Some(mut bridge) = Bridge::start(&config, context, &mut signals).await? else {
        return Ok(());
    };
    // A route whose configuration cannot work stops the bridge: retrying would hide it.
    let fatal = loop {
        tokio::select! {
            _ = &mut signals => break None,
            Some(problem) = misconfigured.recv() => {
                error!(error = %problem, "configuration error; stopping");
                break Some(problem);
            }
            Some(()) = hangups.recv() => {
                if let Some(next) = reread(&config) {
                    match bridge.reload(&next, &mut signals).await {
                        Ok(()) => {
                            info!("configuration reloaded");
                            config = next;
                        }
                        Err(e) => error!(error = %e, "reload failed; the routes not yet changed keep running"),
                    }
                }
            }
        }
    };
    info!("shutting down: intake stopped, finishing in-flight batches");
    let _ = stop_tx.send(true);
    bridge.shutdown().await;
    if let Some(server) = http_server {
        let _ = server.await;
    }
    let _ = heartbeat.await;
    state.close().await;
    info!("stopped");
    match fatal {
        Some(problem) => Err(AppError::Usage(problem)),
        None => Ok(()),
    }
}

/// The configuration file read again for a reload; `None`, with every problem logged,
/// when it cannot be used.
fn reread(running: &Config) -> Option<Config> {
    let Some(file) = &running.file else {
        warn!("SIGHUP ignored: this configuration was not read from a file");
        return None;
    };
    info!(file = %file.display(), "SIGHUP: reading the configuration again");
    match crate::config::load(file) {
        Ok(next) => Some(next),
        Err(e) => {
            error!(problem = %e, "the configuration was not reloaded; the running one stays");
            None
        }
    }
}

/// One item per SIGHUP.
fn hangups() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    // A reload already waiting covers this one too.
                    let _ = tx.try_send(());
                }
            });
        }
        Err(e) => warn!(error = %e, "cannot listen for SIGHUP; reloads are off"),
    }
    rx
}

/// The configured state store, with `state_password_file` applied.
pub async fn open_state(config: &Config) -> Result<State, AppError> {
    let password = match &config.state_password_file {
        Some(file) => Some(crate::config::read_secret_file(file.as_str()).map_err(|e| {
            AppError::Runtime(format!(
                "cannot read state_password_file {}: {e}",
                file.as_str()
            ))
        })?),
        None => None,
    };
    State::open_with(config.state.value.as_str(), password.as_deref())
        .await
        .map_err(|e| AppError::Runtime(e.to_string()))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
