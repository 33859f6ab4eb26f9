//! The commands: `run`, `check` and `dlq …`, over a loaded configuration.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::broker::amqp::AmqpSettings;
use crate::broker::amqp_publish::AmqpPublisher;
use crate::broker::amqp_source::{AmqpSource, QueueSpec};
use crate::broker::budget::ByteBudget;
use crate::broker::mqtt::{MqttSettings, MqttSource, Subscription};
use crate::broker::mqtt_publish::MqttPublisher;
use crate::broker::publisher::Publisher;
use crate::config::BrokerKind;
use crate::config::Config;
use crate::db::DbSpec;
use crate::db::poll::Poller;
use crate::db::worker;
use crate::inbound::InboundRoute;
use crate::metrics::{Kind, Metrics, RouteMetrics};
use crate::outbound::{Destination, OutboundRoute};
use crate::routes::{InboundPlan, Intake, OutboundPlan, inbound_plans, outbound_plans};
use crate::state::State;

pub use crate::error::AppError;

/// How long shutdown waits for in-flight batches before releasing them.
const DRAIN_GRACE: Duration = Duration::from_secs(20);

pub fn db_specs(config: &Config) -> Result<BTreeMap<String, DbSpec>, AppError> {
    config
        .databases
        .iter()
        .map(|(name, db)| {
            Ok((
                name.clone(),
                DbSpec::from_config(name, &db.value).map_err(AppError::Usage)?,
            ))
        })
        .collect()
}

fn broker_settings(config: &Config) -> Result<BTreeMap<String, MqttSettings>, AppError> {
    config
        .brokers
        .iter()
        .filter(|(_, b)| b.value.kind() == Some(BrokerKind::Mqtt))
        .map(|(name, b)| {
            Ok((
                name.clone(),
                MqttSettings::from_config(name, &b.value).map_err(AppError::Usage)?,
            ))
        })
        .collect()
}

fn amqp_settings(config: &Config) -> Result<BTreeMap<String, AmqpSettings>, AppError> {
    config
        .brokers
        .iter()
        .filter(|(_, b)| b.value.kind() == Some(BrokerKind::Amqp))
        .map(|(name, b)| {
            Ok((
                name.clone(),
                AmqpSettings::from_config(name, &b.value).map_err(AppError::Usage)?,
            ))
        })
        .collect()
}

/// How many outbound publishes may wait for their broker confirmation at once.
const PUBLISH_WINDOW: usize = 1000;

fn outbound_route(
    plan: OutboundPlan,
    dbs: &BTreeMap<String, DbSpec>,
    brokers: &BTreeMap<String, MqttSettings>,
    amqp: &BTreeMap<String, AmqpSettings>,
    state: &State,
    metrics: &Metrics,
    misconfigured: &mpsc::UnboundedSender<String>,
) -> Result<OutboundRoute, AppError> {
    let poller = Poller::start(dbs[&plan.database].clone(), plan.poll.clone())
        .map_err(|e| AppError::Runtime(e.to_string()))?;
    let publisher = publisher(
        &plan.broker,
        &plan.name,
        plan.qos,
        plan.retain,
        brokers,
        amqp,
    )?;
    let metrics = metrics.route(&plan.name, Kind::Outbound, &plan.broker, &plan.database);
    Ok(OutboundRoute {
        metrics,
        name: plan.name,
        broker: plan.broker,
        poller,
        publisher,
        state: state.clone(),
        destination: plan.destination,
        format: plan.format,
        csv: plan.csv,
        start: plan.start,
        interval: plan.interval,
        delay: plan.delay,
        max_rows: plan.poll.max_rows,
        after_publish: plan.poll.after_publish.is_some(),
        misconfigured: misconfigured.clone(),
    })
}

/// A confirming publisher on `broker`; an MQTT one has its own session, named after `user`.
fn publisher(
    broker: &str,
    user: &str,
    qos: crate::config::Qos,
    retain: bool,
    brokers: &BTreeMap<String, MqttSettings>,
    amqp: &BTreeMap<String, AmqpSettings>,
) -> Result<Publisher, AppError> {
    match (brokers.get(broker), amqp.get(broker)) {
        (Some(settings), _) => Ok(Publisher::Mqtt(MqttPublisher::start(
            settings.clone(),
            format!("{}-{user}", settings.client_id),
            crate::broker::mqtt::qos(qos),
            retain,
            PUBLISH_WINDOW,
        ))),
        (None, Some(settings)) => Ok(Publisher::Amqp(AmqpPublisher::new(settings.clone()))),
        (None, None) => Err(AppError::Usage(format!("{user}: unknown broker {broker}"))),
    }
}

/// Publishers for `dlq replay`: one per outbound route, each with its own MQTT session.
pub fn replay_publishers(config: &Config) -> Result<crate::replay::MakePublisher, AppError> {
    let brokers = broker_settings(config)?;
    let amqp = amqp_settings(config)?;
    Ok(Box::new(move |plan: &OutboundPlan| {
        publisher(
            &plan.broker,
            &format!("{}-replay", plan.name),
            plan.qos,
            plan.retain,
            &brokers,
            &amqp,
        )
        .map_err(|e| e.to_string())
    }))
}

/// The dead-letter mirror, when `dead_letter.publish` is configured.
fn mirror(
    config: &Config,
    state: &State,
    brokers: &BTreeMap<String, MqttSettings>,
    amqp: &BTreeMap<String, AmqpSettings>,
) -> Result<Option<crate::mirror::Mirror>, AppError> {
    let Some(m) = config.dead_letter.as_ref().and_then(|d| d.publish.as_ref()) else {
        return Ok(None);
    };
    let m = &m.value;
    let template = |t: &Option<serde_saphyr::Spanned<crate::config::EnvString>>| {
        crate::template::Template::parse(t.as_ref().map(|t| t.value.as_str()).unwrap_or(""))
            .map_err(AppError::Usage)
    };
    let target = match &m.topic {
        Some(_) => crate::mirror::Target::Mqtt {
            topic: template(&m.topic)?,
        },
        None => crate::mirror::Target::Amqp {
            exchange: template(&m.exchange)?,
            routing_key: template(&m.routing_key)?,
        },
    };
    let broker = m.broker.value.to_string();
    Ok(Some(crate::mirror::Mirror {
        state: state.clone(),
        publisher: publisher(&broker, "dead-letters", m.qos, false, brokers, amqp)?,
        target,
        broker,
    }))
}

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
    let state = State::open(config.state.as_str())
        .await
        .map_err(|e| AppError::Runtime(e.to_string()))?;
    if plans.is_empty() && outbound.is_empty() {
        warn!("no routes configured; nothing to do");
    }

    let mirror = mirror(&config, &state, &brokers, &amqp)?;
    if mirror.is_some() {
        crate::mirror::start_position(&state)
            .await
            .map_err(AppError::Runtime)?;
    }

    let stop_flag = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
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
            Intake::Mqtt { filter, qos } => {
                let (tx, rx) = mpsc::channel(brokers[&plan.broker].max_in_flight);
                subscriptions
                    .entry(plan.broker.clone())
                    .or_default()
                    .push(Subscription {
                        filter: filter.clone(),
                        qos: *qos,
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
    let sources: Vec<MqttSource> = subscriptions
        .into_iter()
        .map(|(broker, subs)| MqttSource::start(brokers[&broker].clone(), subs))
        .collect();
    let (misconfigured_tx, mut misconfigured) = mpsc::unbounded_channel();
    for plan in outbound {
        let route = outbound_route(
            plan,
            &dbs,
            &brokers,
            &amqp,
            &state,
            &metrics,
            &misconfigured_tx,
        )?;
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
    for source in sources {
        source.shutdown(Duration::from_secs(5)).await;
    }
    for source in amqp_sources {
        source.shutdown(Duration::from_secs(5)).await;
    }
    if let Some(server) = http_server {
        let _ = server.await;
    }
    state.close().await;
    info!("stopped");
    match fatal {
        Some(problem) => Err(AppError::Usage(problem)),
        None => Ok(()),
    }
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

/// `mqdb check`: one line per route; Ok only if every route passes.
pub async fn check(config: Config) -> Result<(), AppError> {
    let plans = inbound_plans(&config).map_err(AppError::Usage)?;
    let outbound = outbound_plans(&config).map_err(AppError::Usage)?;
    let dbs = db_specs(&config)?;
    let brokers = broker_settings(&config)?;
    let amqp = amqp_settings(&config)?;
    let mut broker_status: BTreeMap<String, Result<(), String>> = BTreeMap::new();
    for (name, settings) in &brokers {
        broker_status.insert(name.clone(), probe_mqtt(settings).await);
    }
    for (name, settings) in &amqp {
        broker_status.insert(name.clone(), settings.connect().await.map(|_| ()));
    }
    let mut failures = 0;
    // What failed besides routes: the dead-letter mirror, brokers no route uses.
    let mut others: Vec<String> = Vec::new();
    for plan in &plans {
        let db_result = {
            let spec = dbs[&plan.database].clone();
            let target = plan.target.clone();
            tokio::task::spawn_blocking(move || crate::db::probe::check_table(&spec, &target))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
        };
        let mut note = String::new();
        let mut problem = match (&broker_status[&plan.broker], db_result) {
            (Err(e), _) => Some(format!("broker {}: {e}", plan.broker)),
            (Ok(()), Err(e)) => Some(format!("database {}: {e}", plan.database)),
            (Ok(()), Ok(_)) => None,
        };
        if let (None, Intake::Amqp { queue, .. }) = (&problem, &plan.intake) {
            match check_queue(&amqp[&plan.broker], queue).await {
                Ok(n) => note = n,
                Err(e) => problem = Some(format!("broker {}: {e}", plan.broker)),
            }
        }
        match problem {
            None => println!(
                "ok    inbound {}: {} → {}.{}{note}",
                plan.name,
                plan.intake.describe(),
                plan.database,
                plan.target.table
            ),
            Some(p) => {
                failures += 1;
                println!("FAIL  inbound {}: {p}", plan.name);
            }
        }
    }
    for plan in &outbound {
        let problem = match &broker_status[&plan.broker] {
            Err(e) => Some(format!("broker {}: {e}", plan.broker)),
            Ok(()) => {
                let spec = dbs[&plan.database].clone();
                let plan_for_db = plan.clone();
                let db = tokio::task::spawn_blocking(move || {
                    crate::db::probe::check_query(
                        &spec,
                        &plan_for_db.poll,
                        &plan_for_db.destination.columns(),
                        &plan_for_db.start,
                    )
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
                match db {
                    Err(e) => Some(format!("database {}: {e}", plan.database)),
                    Ok(()) => match (&plan.destination, amqp.get(&plan.broker)) {
                        (Destination::Amqp { exchange, .. }, Some(settings))
                            if exchange.columns().count() == 0 =>
                        {
                            let name = exchange.render(|_| None).unwrap_or_default();
                            check_exchange(settings, &name).await.err()
                        }
                        _ => None,
                    },
                }
            }
        };
        match problem {
            None => println!(
                "ok    outbound {}: {} → broker {}",
                plan.name, plan.database, plan.broker
            ),
            Some(p) => {
                failures += 1;
                println!("FAIL  outbound {}: {p}", plan.name);
            }
        }
    }
    let mirror = config.dead_letter.as_ref().and_then(|d| d.publish.as_ref());
    if let Some(m) = mirror {
        let broker = m.value.broker.value.to_string();
        let exchange = m.value.exchange.as_ref().map(|e| e.value.to_string());
        let problem = match (&broker_status[&broker], exchange, amqp.get(&broker)) {
            (Err(e), _, _) => Some(format!("broker {broker}: {e}")),
            (Ok(()), Some(x), Some(settings)) if !x.contains('{') => {
                check_exchange(settings, &x).await.err()
            }
            _ => None,
        };
        match problem {
            None => println!("ok    dead_letter.publish → broker {broker}"),
            Some(p) => {
                others.push("dead_letter.publish".to_string());
                println!("FAIL  dead_letter.publish: {p}");
            }
        }
    }
    for (name, status) in &broker_status {
        if let Err(e) = status
            && !plans.iter().any(|p| &p.broker == name)
            && !outbound.iter().any(|p| &p.broker == name)
            && mirror.is_none_or(|m| m.value.broker.value.as_str() != name)
        {
            others.push(format!("broker {name}"));
            println!("FAIL  broker {name}: {e}");
        }
    }
    match check_verdict(failures, plans.len() + outbound.len(), &others) {
        Some(verdict) => Err(AppError::Runtime(verdict)),
        None => Ok(()),
    }
}

/// What `check` says when something failed: routes are counted among routes, and the
/// dead-letter mirror and unused brokers are named apart.
fn check_verdict(failed_routes: usize, routes: usize, others: &[String]) -> Option<String> {
    let routes_part = format!("{failed_routes} of {routes} routes failed the check");
    match (failed_routes, others) {
        (0, []) => None,
        (_, []) => Some(routes_part),
        (0, others) => Some(format!("{} failed the check", others.join(", "))),
        (_, others) => Some(format!("{routes_part}, and so did {}", others.join(", "))),
    }
}

/// How the queue stands, as a note for the `check` line; `run` declares a missing one.
async fn check_queue(settings: &AmqpSettings, queue: &str) -> Result<String, String> {
    let conn = settings.connect().await?;
    let depth = crate::broker::amqp_source::queue_depth(&conn, queue).await;
    let _ = conn.close(200, "check done".into()).await;
    Ok(match depth? {
        Some(n) => format!(" ({n} messages waiting)"),
        None => " (the queue does not exist yet; run declares it)".to_string(),
    })
}

/// The exchange must exist: mqdb publishes to it but never declares it.
async fn check_exchange(settings: &AmqpSettings, exchange: &str) -> Result<(), String> {
    if exchange.is_empty() {
        return Ok(());
    }
    let conn = settings.connect().await?;
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    let passive = lapin::options::ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let result = channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Direct,
            passive,
            Default::default(),
        )
        .await
        .map_err(|e| format!("exchange {exchange:?} is not usable: {e}"));
    let _ = conn.close(200, "check done".into()).await;
    result
}

/// Connects with a separate, clean session so a running instance's session is untouched.
async fn probe_mqtt(settings: &MqttSettings) -> Result<(), String> {
    let options = settings.options(&format!("{}-check", settings.client_id), true);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("cannot connect to {}: {e}", settings.endpoint())),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "no answer from {} within 10 s",
            settings.endpoint()
        ))
    });
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::check_verdict;

    #[test]
    fn check_counts_routes_among_routes_and_names_the_rest() {
        assert_eq!(check_verdict(0, 3, &[]), None);
        assert_eq!(
            check_verdict(3, 3, &["dead_letter.publish".into()]).as_deref(),
            Some("3 of 3 routes failed the check, and so did dead_letter.publish")
        );
        assert_eq!(
            check_verdict(0, 2, &["broker spare".into()]).as_deref(),
            Some("broker spare failed the check")
        );
        assert_eq!(
            check_verdict(1, 2, &[]).as_deref(),
            Some("1 of 2 routes failed the check")
        );
    }
}
