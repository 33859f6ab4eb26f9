//! The commands: `run`, `check` and `dlq …`, over a loaded configuration.

mod check;
mod wiring;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::broker::amqp_source::{AmqpSource, QueueSpec};
use crate::broker::budget::ByteBudget;
use crate::broker::mqtt::{MqttSource, Subscription};
use crate::config::Config;
use crate::db::worker;
use crate::inbound::InboundRoute;
use crate::lease::Leases;
use crate::metrics::{Kind, Metrics, RouteMetrics};
use crate::routes::{InboundPlan, Intake, inbound_plans, outbound_plans};
use crate::slots::SharedSource;
use crate::state::{Holder, State};

pub use crate::error::AppError;

pub use check::check;
use wiring::{amqp_settings, broker_settings, mirror, outbound_route};
pub use wiring::{db_specs, replay_publishers};

/// How long shutdown waits for in-flight batches before releasing them.
const DRAIN_GRACE: Duration = Duration::from_secs(20);

/// `mqdb run`: every route until SIGINT/SIGTERM.
pub async fn run(config: Config) -> Result<(), AppError> {
    run_until(config, shutdown_signal(), Metrics::new()).await
}

/// Every route until `stop` resolves, then drains; the routes report to `metrics`.
pub async fn run_until(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
    metrics: Arc<Metrics>,
) -> Result<(), AppError> {
    let plans = inbound_plans(&config).map_err(AppError::Usage)?;
    let outbound = outbound_plans(&config).map_err(AppError::Usage)?;
    let dbs = db_specs(&config)?;
    let brokers = broker_settings(&config)?;
    let amqp = amqp_settings(&config)?;
    let paths = brokers
        .iter()
        .map(|(name, s)| (name, s.endpoint(), &s.proxy))
        .chain(amqp.iter().map(|(name, s)| (name, s.endpoint(), &s.proxy)));
    for (name, endpoint, proxy) in paths {
        info!(broker = %name, %endpoint, %proxy, "broker connection path");
    }
    let state = open_state(&config).await?;
    if plans.is_empty() && outbound.is_empty() {
        warn!("no routes configured; nothing to do");
    }
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

    let mirror = mirror(&config, &leases, &brokers, &amqp)?;
    if mirror.is_some() {
        crate::mirror::start_position(&state)
            .await
            .map_err(AppError::Runtime)?;
    }

    let stop_flag = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let heartbeat = tokio::spawn(crate::lease::heartbeat(
        state.clone(),
        holder.clone(),
        config.lease / 3,
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

    // Every sink first: subscribing before the tables are reachable would only pile
    // messages up in memory.
    let mut starting = tokio::task::JoinSet::new();
    for plan in plans {
        let spec = dbs[&plan.database].clone();
        let stop = stop_flag.clone();
        let route_metrics = metrics.route(&plan.name, Kind::Inbound, &plan.broker, &plan.database);
        starting.spawn(async move {
            let sink = worker::start(spec, plan.target.clone(), stop, route_metrics.clone()).await;
            (plan, sink, route_metrics)
        });
    }
    let mut ready: Vec<(InboundPlan, worker::Sink, Arc<RouteMetrics>)> = Vec::new();
    loop {
        tokio::select! {
            next = starting.join_next() => match next {
                None => break,
                Some(Ok((plan, Ok(sink), m))) => ready.push((plan, sink, m)),
                Some(Ok((plan, Err(e), _))) => {
                    stop_flag.store(true, Ordering::Relaxed);
                    return Err(AppError::Runtime(format!("route {}: {e}", plan.name)));
                }
                Some(Err(e)) => return Err(AppError::Runtime(format!("route start-up failed: {e}"))),
            },
            _ = &mut signals => {
                info!("stopping before all databases were reached");
                stop_flag.store(true, Ordering::Relaxed);
                return Ok(());
            }
        }
    }

    let mut subscriptions: BTreeMap<String, Vec<Subscription>> = BTreeMap::new();
    let mut amqp_sources = Vec::new();
    let mut budgets: BTreeMap<String, ByteBudget> = BTreeMap::new();
    let mut route_tasks = tokio::task::JoinSet::new();
    for (plan, sink, route_metrics) in ready {
        let rx = match &plan.intake {
            Intake::Mqtt { filter, qos, share } => {
                let (tx, rx) = mpsc::channel(brokers[&plan.broker].max_in_flight);
                subscriptions
                    .entry(plan.broker.clone())
                    .or_default()
                    .push(Subscription {
                        filter: filter.clone(),
                        qos: *qos,
                        share: share.clone(),
                        route: tx,
                        metrics: route_metrics.clone(),
                    });
                rx
            }
            Intake::Amqp {
                queue,
                bind,
                prefetch,
            } => {
                // The prefetch bounds what the broker hands out, so this never fills.
                let (tx, rx) = mpsc::channel(usize::from(*prefetch).max(1));
                let spec = QueueSpec {
                    route: plan.name.clone(),
                    queue: queue.clone(),
                    bind: bind.clone(),
                    prefetch: *prefetch,
                    metrics: route_metrics.clone(),
                };
                let budget = budgets
                    .entry(plan.broker.clone())
                    .or_insert_with(|| {
                        ByteBudget::new(config.brokers[&plan.broker].value.max_in_flight_bytes)
                    })
                    .clone();
                amqp_sources.push(AmqpSource::start(
                    amqp[&plan.broker].clone(),
                    spec,
                    tx,
                    budget,
                ));
                rx
            }
        };
        let route = InboundRoute::new(&plan, sink, state.clone(), route_metrics);
        info!(route = %plan.name, source = %plan.intake.describe(), table = %plan.target.table, "route ready");
        route_tasks.spawn(route.run(rx, stop_rx.clone()));
    }
    let sources: Vec<Source> = subscriptions
        .into_iter()
        .map(|(broker, subs)| {
            let settings = brokers[&broker].clone();
            if subs.iter().any(|s| s.share.is_some()) {
                Source::Shared(SharedSource::start(settings, subs, leases.clone()))
            } else {
                Source::Own(MqttSource::start(settings, subs))
            }
        })
        .collect();
    let (misconfigured_tx, mut misconfigured) = mpsc::unbounded_channel();
    for plan in outbound {
        let route = outbound_route(plan, &dbs, &brokers, &amqp, &leases, &misconfigured_tx)?;
        route_tasks.spawn(route.run(stop_rx.clone()));
    }
    if let Some(mirror) = mirror {
        route_tasks.spawn(mirror.run(stop_rx.clone()));
    }

    // A route whose configuration cannot work stops the bridge: retrying would hide it.
    let fatal = tokio::select! {
        _ = &mut signals => None,
        Some(problem) = misconfigured.recv() => {
            error!(error = %problem, "configuration error; stopping");
            Some(problem)
        }
    };
    info!("shutting down: intake stopped, finishing in-flight batches");
    for source in &sources {
        source.close_intake();
    }
    for source in &amqp_sources {
        source.close_intake();
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_GRACE, async {
        while route_tasks.join_next().await.is_some() {}
    })
    .await;
    stop_flag.store(true, Ordering::Relaxed);
    if drained.is_err() {
        warn!(
            "in-flight batches did not finish in time; they stay unacknowledged and will be redelivered"
        );
        route_tasks.abort_all();
    }
    // After an abort the acknowledgements still owed are those of committed batches, sent
    // at once; waiting longer would only wait for batches that will never finish.
    let grace = if drained.is_err() {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    for source in sources {
        source.shutdown(grace).await;
    }
    for source in amqp_sources {
        source.shutdown(grace).await;
    }
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

/// A broker's MQTT source: its own session, or a slot among instances sharing
/// subscriptions.
enum Source {
    Own(MqttSource),
    Shared(SharedSource),
}

impl Source {
    fn close_intake(&self) {
        match self {
            Source::Own(s) => s.close_intake(),
            Source::Shared(s) => s.close_intake(),
        }
    }

    async fn shutdown(self, grace: Duration) {
        match self {
            Source::Own(s) => s.shutdown(grace).await,
            Source::Shared(s) => s.shutdown(grace).await,
        }
    }
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
