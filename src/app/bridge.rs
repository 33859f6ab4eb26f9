//! The running routes of one configuration, as units that a reload can stop, start or
//! leave alone: each inbound route with its sink (and, on AMQP, its consumer), each MQTT
//! broker's source, each outbound route and the dead-letter mirror.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{error, info, warn};

use crate::broker::amqp::AmqpSettings;
use crate::broker::amqp_source::{AmqpSource, QueueSpec};
use crate::broker::budget::ByteBudget;
use crate::broker::mqtt::{
    MqttSettings, MqttSource, Subscription, route_table, subscribed_filters,
};
use crate::config::Config;
use crate::db::{DbSpec, worker};
use crate::inbound::InboundRoute;
use crate::lease::Leases;
use crate::metrics::{Kind, RouteMetrics};
use crate::routes::{InboundPlan, Intake, OutboundPlan, inbound_plans, outbound_plans};
use crate::slots::SharedSource;

use super::layout::Layout;
use super::wiring::{amqp_settings, broker_settings, db_specs, mirror, outbound_route};
use crate::error::AppError;

/// How long shutdown, or a reload, waits for a route's in-flight batches.
pub(super) const DRAIN_GRACE: Duration = Duration::from_secs(20);

/// What every unit of a process shares.
pub(super) struct Context {
    pub leases: Leases,
    pub misconfigured: mpsc::UnboundedSender<String>,
}

/// A configuration resolved into the settings the units are built from.
struct Resolved {
    inbound: Vec<InboundPlan>,
    outbound: Vec<OutboundPlan>,
    dbs: BTreeMap<String, DbSpec>,
    mqtt: BTreeMap<String, MqttSettings>,
    amqp: BTreeMap<String, AmqpSettings>,
    /// `max_in_flight_bytes` of each AMQP broker.
    amqp_bytes: BTreeMap<String, u64>,
    layout: Layout,
}

impl Resolved {
    fn of(config: &Config) -> Result<Resolved, AppError> {
        Ok(Resolved {
            inbound: inbound_plans(config).map_err(AppError::Usage)?,
            outbound: outbound_plans(config).map_err(AppError::Usage)?,
            dbs: db_specs(config)?,
            mqtt: broker_settings(config)?,
            amqp: amqp_settings(config)?,
            amqp_bytes: config
                .brokers
                .iter()
                .map(|(name, b)| (name.clone(), b.value.max_in_flight_bytes))
                .collect(),
            layout: Layout::of(&config.text),
        })
    }
}

/// An inbound route whose sink reached its table, ready to run.
struct Ready {
    plan: InboundPlan,
    sink: worker::Sink,
    sink_stop: Arc<AtomicBool>,
    metrics: Arc<RouteMetrics>,
}

struct InboundUnit {
    fingerprint: Value,
    metrics: Arc<RouteMetrics>,
    /// The MQTT broker whose route table holds this route, if any.
    mqtt_broker: Option<String>,
    amqp: Option<AmqpSource>,
    stop: watch::Sender<bool>,
    sink_stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// A broker's MQTT source and the table of routes it feeds.
struct MqttUnit {
    fingerprint: Value,
    table: watch::Sender<Arc<Vec<Subscription>>>,
    source: Source,
}

/// An outbound route or the mirror: a task that runs until told to stop.
struct TaskUnit {
    fingerprint: Value,
    metrics: Option<Arc<RouteMetrics>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub(super) struct Bridge {
    context: Context,
    inbound: BTreeMap<String, InboundUnit>,
    mqtt: BTreeMap<String, MqttUnit>,
    outbound: BTreeMap<String, TaskUnit>,
    mirror: Option<TaskUnit>,
    amqp_budgets: BTreeMap<String, (Value, ByteBudget)>,
    layout: Layout,
    /// Units a reload stopped, still finishing their in-flight work.
    retiring: JoinSet<()>,
}

impl Bridge {
    /// Every unit of `config`. Every sink first: subscribing before the tables are
    /// reachable would only pile messages up in memory. `None` if `stop` came first.
    pub async fn start(
        config: &Config,
        context: Context,
        stop: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<Option<Bridge>, AppError> {
        let resolved = Resolved::of(config)?;
        if resolved.inbound.is_empty() && resolved.outbound.is_empty() {
            warn!("no routes configured; nothing to do");
        }
        let mut bridge = Bridge {
            context,
            inbound: BTreeMap::new(),
            mqtt: BTreeMap::new(),
            outbound: BTreeMap::new(),
            mirror: None,
            amqp_budgets: BTreeMap::new(),
            layout: Layout::default(),
            retiring: JoinSet::new(),
        };
        let starting = bridge.start_sinks(&resolved, resolved.inbound.clone());
        let ready = tokio::select! {
            ready = starting => ready,
            _ = stop => {
                info!("stopping before all databases were reached");
                return Ok(None);
            }
        };
        let mut ready_routes = Vec::new();
        for (name, result) in ready {
            match result {
                Ok(r) => ready_routes.push(r),
                Err((_, e)) => {
                    for r in ready_routes {
                        r.sink_stop.store(true, Ordering::Relaxed);
                    }
                    return Err(AppError::Runtime(format!("route {name}: {e}")));
                }
            }
        }
        let mut tables: BTreeMap<String, Vec<Subscription>> = BTreeMap::new();
        for ready in ready_routes {
            let (name, unit, subscription) = bridge.launch_inbound(&resolved, ready);
            if let (Some(broker), Some(s)) = (&unit.mqtt_broker, subscription) {
                tables.entry(broker.clone()).or_default().push(s);
            }
            bridge.inbound.insert(name, unit);
        }
        for (broker, subscriptions) in tables {
            bridge.start_mqtt(&resolved, &broker, subscriptions);
        }
        for plan in resolved.outbound.clone() {
            bridge.start_outbound(&resolved, plan)?;
        }
        bridge.start_mirror(config, &resolved).await?;
        bridge.layout = resolved.layout;
        Ok(Some(bridge))
    }

    /// Applies `config`, read again: units whose blocks did not change go on untouched;
    /// changed and removed ones drain and stop, changed and new ones start. Errors leave
    /// the running units as they were.
    pub async fn reload(
        &mut self,
        config: &Config,
        stop: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<(), AppError> {
        let next = Resolved::of(config)?;
        let new = &next.layout;
        // Units earlier reloads stopped that have finished.
        while self.retiring.try_join_next().is_some() {}
        // Inbound: the new and changed routes' sinks first, while the old ones run on.
        let starting: Vec<InboundPlan> = next
            .inbound
            .iter()
            .filter(|p| {
                self.inbound
                    .get(&p.name)
                    .is_none_or(|u| u.fingerprint != new.inbound_route(&p.name))
            })
            .cloned()
            .collect();
        let ready = tokio::select! {
            ready = self.start_sinks(&next, starting) => ready,
            _ = stop => return Ok(()),
        };
        let mut failed = Vec::new();
        let mut ready_routes = Vec::new();
        for (name, result) in ready {
            match result {
                Ok(r) => ready_routes.push(r),
                Err((metrics, e)) => {
                    error!(route = %name, error = %e, "the reloaded route cannot start; it keeps its old settings, if it had any");
                    self.context.leases.metrics.retire(&metrics);
                    failed.push(name);
                }
            }
        }
        let leaving: Vec<String> = self
            .inbound
            .iter()
            .filter(|(name, unit)| {
                !failed.contains(name)
                    && (!new.inbound.contains_key(*name)
                        || unit.fingerprint != new.inbound_route(name)
                        || ready_routes.iter().any(|r| &r.plan.name == *name))
            })
            .map(|(name, _)| name.clone())
            .collect();
        let mut tables: BTreeMap<String, Vec<Subscription>> = self
            .mqtt
            .iter()
            .map(|(b, u)| (b.clone(), u.table.borrow().as_ref().clone()))
            .collect();
        for name in &leaving {
            let unit = self.inbound.remove(name).expect("listed");
            if let Some(broker) = &unit.mqtt_broker
                && let Some(table) = tables.get_mut(broker)
            {
                // The source drops its sender with the table entry, so the route drains
                // what it has and ends.
                table.retain(|s| s.metrics.name != *name);
            }
            info!(route = %name, "route stopping for the reload");
            self.context.leases.metrics.retire(&unit.metrics);
            self.retiring.spawn(unit.stop());
        }
        for ready in ready_routes {
            let (name, unit, subscription) = self.launch_inbound(&next, ready);
            if let (Some(broker), Some(s)) = (&unit.mqtt_broker, subscription) {
                tables.entry(broker.clone()).or_default().push(s);
            }
            info!(route = %name, "route started by the reload");
            self.inbound.insert(name, unit);
        }
        // MQTT sources: a changed broker reconnects under its running routes; a broker
        // without routes closes.
        for (broker, subscriptions) in tables {
            let changed = self
                .mqtt
                .get(&broker)
                .is_some_and(|u| u.fingerprint != new.broker(&broker));
            let mut stale = Vec::new();
            if (subscriptions.is_empty() || changed)
                && let Some(unit) = self.mqtt.remove(&broker)
            {
                info!(broker = %broker, "broker source closing for the reload");
                let keep = subscribed_filters(&subscriptions);
                stale = subscribed_filters(&unit.table.borrow())
                    .into_iter()
                    .filter(|(f, _)| !keep.iter().any(|(k, _)| k == f))
                    .map(|(f, _)| f)
                    .collect();
                unit.source.close_intake();
                unit.source.shutdown(Duration::from_secs(5)).await;
            }
            if subscriptions.is_empty() {
                continue;
            }
            match self.mqtt.get(&broker) {
                Some(unit) => {
                    unit.table.send_if_modified(|t| {
                        let same = t.len() == subscriptions.len()
                            && t.iter()
                                .zip(&subscriptions)
                                .all(|(a, b)| a.route.same_channel(&b.route));
                        *t = Arc::new(subscriptions);
                        !same
                    });
                }
                None => {
                    self.start_mqtt(&next, &broker, subscriptions);
                    // The session the new source resumes still has them.
                    if let Some(MqttUnit {
                        source: Source::Own(source),
                        ..
                    }) = self.mqtt.get(&broker)
                        && !stale.is_empty()
                    {
                        source.forget(stale);
                    }
                }
            }
        }
        // Outbound routes and the mirror: the old one stops before the new one starts, so
        // that the two never publish the same rows side by side.
        let names: Vec<String> = self.outbound.keys().cloned().collect();
        for name in names {
            let fingerprint = new.outbound_route(&name);
            if self.outbound[&name].fingerprint != fingerprint || !new.outbound.contains_key(&name)
            {
                info!(route = %name, "route stopping for the reload");
                let unit = self.outbound.remove(&name).expect("listed");
                if let Some(m) = &unit.metrics {
                    self.context.leases.metrics.retire(m);
                }
                unit.stop().await;
            }
        }
        for plan in next.outbound.clone() {
            if !self.outbound.contains_key(&plan.name) {
                info!(route = %plan.name, "route started by the reload");
                self.start_outbound(&next, plan)?;
            }
        }
        if self.mirror.as_ref().map(|m| &m.fingerprint) != Some(&new.mirror())
            && let Some(m) = self.mirror.take()
        {
            info!("dead-letter mirror stopping for the reload");
            m.stop().await;
        }
        if self.mirror.is_none() {
            self.start_mirror(config, &next).await?;
        }
        for key in self.layout.process_changes(new) {
            warn!(key = %key, "this setting takes effect at the next start, not on reload");
        }
        self.layout = next.layout;
        Ok(())
    }

    /// Stops every unit: intake first, then the routes finish their in-flight batches.
    pub async fn shutdown(mut self) {
        for unit in self.mqtt.values() {
            unit.source.close_intake();
        }
        for unit in self.inbound.values() {
            if let Some(amqp) = &unit.amqp {
                amqp.close_intake();
            }
        }
        let mut tasks = JoinSet::new();
        let mut sink_stops = Vec::new();
        let mut amqp_sources = Vec::new();
        for (_, unit) in std::mem::take(&mut self.inbound) {
            let _ = unit.stop.send(true);
            sink_stops.push(unit.sink_stop);
            amqp_sources.extend(unit.amqp);
            tasks.spawn(async move {
                let _ = unit.task.await;
            });
        }
        for unit in std::mem::take(&mut self.outbound)
            .into_values()
            .chain(self.mirror.take())
        {
            let _ = unit.stop.send(true);
            tasks.spawn(async move {
                let _ = unit.task.await;
            });
        }
        let retiring = &mut self.retiring;
        let drained = tokio::time::timeout(DRAIN_GRACE, async {
            while tasks.join_next().await.is_some() {}
            while retiring.join_next().await.is_some() {}
        })
        .await;
        for stop in &sink_stops {
            stop.store(true, Ordering::Relaxed);
        }
        if drained.is_err() {
            warn!(
                "in-flight batches did not finish in time; they stay unacknowledged and will be redelivered"
            );
            tasks.abort_all();
            self.retiring.abort_all();
        }
        // After an abort the acknowledgements still owed are those of committed batches,
        // sent at once; waiting longer would only wait for batches that will never finish.
        let grace = if drained.is_err() {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        for (_, unit) in std::mem::take(&mut self.mqtt) {
            unit.source.shutdown(grace).await;
        }
        for source in amqp_sources {
            source.shutdown(grace).await;
        }
    }

    /// Starts the sinks of `plans` at once; each result with its route's name.
    async fn start_sinks(
        &self,
        resolved: &Resolved,
        plans: Vec<InboundPlan>,
    ) -> Vec<(String, Result<Ready, (Arc<RouteMetrics>, String)>)> {
        let mut starting = JoinSet::new();
        let mut stops = Vec::new();
        for plan in plans {
            let spec = resolved.dbs[&plan.database].clone();
            let sink_stop = Arc::new(AtomicBool::new(false));
            stops.push(sink_stop.clone());
            let metrics = self.context.leases.metrics.route(
                &plan.name,
                Kind::Inbound,
                &plan.broker,
                &plan.database,
            );
            starting.spawn(async move {
                let sink = worker::start(
                    spec,
                    plan.target.clone(),
                    sink_stop.clone(),
                    metrics.clone(),
                )
                .await;
                let name = plan.name.clone();
                let ready = sink
                    .map_err(|e| (metrics.clone(), e.to_string()))
                    .map(|sink| Ready {
                        plan,
                        sink,
                        sink_stop,
                        metrics,
                    });
                (name, ready)
            });
        }
        // Sinks still connecting when this is dropped give up.
        let _give_up = StopOnDrop(stops);
        let mut ready = Vec::new();
        while let Some(next) = starting.join_next().await {
            // The tasks only await the sink, which does not panic.
            if let Ok(r) = next {
                ready.push(r);
            }
        }
        std::mem::forget(_give_up);
        ready
    }

    /// Runs a route whose sink is ready; an MQTT route's subscription comes back, for its
    /// broker's table.
    fn launch_inbound(
        &mut self,
        resolved: &Resolved,
        ready: Ready,
    ) -> (String, InboundUnit, Option<Subscription>) {
        let Ready {
            plan,
            sink,
            sink_stop,
            metrics,
        } = ready;
        let (stop, stop_rx) = watch::channel(false);
        let mut subscription = None;
        let mut amqp = None;
        let rx = match &plan.intake {
            Intake::Mqtt { filter, qos, share } => {
                let (tx, rx) = mpsc::channel(resolved.mqtt[&plan.broker].max_in_flight);
                subscription = Some(Subscription {
                    filter: filter.clone(),
                    qos: *qos,
                    share: share.clone(),
                    route: tx,
                    metrics: metrics.clone(),
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
                    metrics: metrics.clone(),
                };
                let fingerprint = resolved.layout.broker(&plan.broker);
                let budget = match self.amqp_budgets.get(&plan.broker) {
                    Some((f, budget)) if *f == fingerprint => budget.clone(),
                    _ => {
                        let budget = ByteBudget::new(resolved.amqp_bytes[&plan.broker]);
                        self.amqp_budgets
                            .insert(plan.broker.clone(), (fingerprint, budget.clone()));
                        budget
                    }
                };
                amqp = Some(AmqpSource::start(
                    resolved.amqp[&plan.broker].clone(),
                    spec,
                    tx,
                    budget,
                ));
                rx
            }
        };
        let route = InboundRoute::new(
            &plan,
            sink,
            self.context.leases.state.clone(),
            metrics.clone(),
        );
        info!(route = %plan.name, source = %plan.intake.describe(), table = %plan.target.table, "route ready");
        let unit = InboundUnit {
            fingerprint: resolved.layout.inbound_route(&plan.name),
            metrics: metrics.clone(),
            mqtt_broker: subscription.as_ref().map(|_| plan.broker.clone()),
            amqp,
            stop,
            sink_stop,
            task: tokio::spawn(route.run(rx, stop_rx)),
        };
        (plan.name, unit, subscription)
    }

    fn start_mqtt(&mut self, resolved: &Resolved, broker: &str, subscriptions: Vec<Subscription>) {
        let settings = resolved.mqtt[broker].clone();
        let shared = subscriptions.iter().any(|s| s.share.is_some());
        let (table, routes) = route_table(subscriptions);
        let source = if shared {
            Source::Shared(SharedSource::start(
                settings,
                routes,
                self.context.leases.clone(),
            ))
        } else {
            Source::Own(MqttSource::start(settings, routes))
        };
        self.mqtt.insert(
            broker.to_string(),
            MqttUnit {
                fingerprint: resolved.layout.broker(broker),
                table,
                source,
            },
        );
    }

    fn start_outbound(&mut self, resolved: &Resolved, plan: OutboundPlan) -> Result<(), AppError> {
        let name = plan.name.clone();
        let route = outbound_route(
            plan,
            &resolved.dbs,
            &resolved.mqtt,
            &resolved.amqp,
            &self.context.leases,
            &self.context.misconfigured,
        )?;
        let (stop, stop_rx) = watch::channel(false);
        self.outbound.insert(
            name.clone(),
            TaskUnit {
                fingerprint: resolved.layout.outbound_route(&name),
                metrics: Some(route.metrics.clone()),
                stop,
                task: tokio::spawn(route.run(stop_rx)),
            },
        );
        Ok(())
    }

    async fn start_mirror(&mut self, config: &Config, resolved: &Resolved) -> Result<(), AppError> {
        let Some(mirror) = mirror(config, &self.context.leases, &resolved.mqtt, &resolved.amqp)?
        else {
            return Ok(());
        };
        crate::mirror::start_position(&self.context.leases.state)
            .await
            .map_err(AppError::Runtime)?;
        let (stop, stop_rx) = watch::channel(false);
        self.mirror = Some(TaskUnit {
            fingerprint: resolved.layout.mirror(),
            metrics: None,
            stop,
            task: tokio::spawn(mirror.run(stop_rx)),
        });
        Ok(())
    }
}

impl InboundUnit {
    /// Drains the route: an MQTT route ends once its source has dropped its sender (the
    /// caller took it out of the table), an AMQP route once its consumer stopped.
    async fn stop(self) {
        if let Some(amqp) = &self.amqp {
            amqp.close_intake();
            let _ = self.stop.send(true);
        }
        if !drain(self.task).await {
            warn!(
                "a route stopped by a reload did not finish its batches in time; they will be redelivered"
            );
        }
        self.sink_stop.store(true, Ordering::Relaxed);
        if let Some(amqp) = self.amqp {
            amqp.shutdown(Duration::from_secs(5)).await;
        }
    }
}

impl TaskUnit {
    async fn stop(self) {
        let _ = self.stop.send(true);
        drain(self.task).await;
    }
}

/// Waits up to [`DRAIN_GRACE`] for `task` to end, then aborts it; false when it had to be
/// aborted.
async fn drain(mut task: JoinHandle<()>) -> bool {
    if tokio::time::timeout(DRAIN_GRACE, &mut task).await.is_ok() {
        return true;
    }
    task.abort();
    false
}

/// Tells sinks still connecting to give up, when start-up is abandoned.
struct StopOnDrop(Vec<Arc<AtomicBool>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for stop in &self.0 {
            stop.store(true, Ordering::Relaxed);
        }
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
