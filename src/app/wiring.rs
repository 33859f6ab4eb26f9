//! What `run`, `check` and `dlq replay` build from a loaded configuration: database and
//! broker settings, publishers, outbound routes and the dead-letter mirror.

use std::collections::BTreeMap;

use serde_saphyr::Spanned;
use tokio::sync::mpsc;

use crate::broker::amqp::AmqpSettings;
use crate::broker::amqp_publish::AmqpPublisher;
use crate::broker::mqtt::MqttSettings;
use crate::broker::mqtt_publish::MqttPublisher;
use crate::broker::publisher::Publisher;
use crate::config::{Broker, BrokerKind, Config};
use crate::db::DbSpec;
use crate::db::poll::Poller;
use crate::destination::Destination;
use crate::lease::Leases;
use crate::metrics::Kind;
use crate::outbound::OutboundRoute;
use crate::outbound::wake::WakeSpec;
use crate::routes::{OutboundPlan, WakePlan};

pub use crate::error::AppError;

pub fn db_specs(config: &Config) -> Result<BTreeMap<String, DbSpec>, AppError> {
    resolve(&config.databases, |_| true, DbSpec::from_config)
}

pub(super) fn broker_settings(config: &Config) -> Result<BTreeMap<String, MqttSettings>, AppError> {
    let mqtt = |b: &Broker| b.kind() == Some(BrokerKind::Mqtt);
    let mut settings = resolve(&config.brokers, mqtt, MqttSettings::from_config)?;
    if let Some(suffix) = client_id_suffix(config) {
        for s in settings.values_mut() {
            s.client_id = format!("{}-{suffix}", s.client_id);
        }
    }
    Ok(settings)
}

/// What MQTT client ids end with when several instances may share the configuration (a
/// PostgreSQL state store, or an `instance:` set): the instance name, so that each keeps
/// its own sessions instead of taking over another's.
pub(super) fn client_id_suffix(config: &Config) -> Option<String> {
    (config.state_on_postgres() || config.instance.is_some()).then(|| config.instance_name())
}

pub(super) fn amqp_settings(config: &Config) -> Result<BTreeMap<String, AmqpSettings>, AppError> {
    let amqp = |b: &Broker| b.kind() == Some(BrokerKind::Amqp);
    resolve(&config.brokers, amqp, AmqpSettings::from_config)
}

/// Each named block that `keep` selects, resolved into an adapter's own settings.
fn resolve<B, T>(
    blocks: &BTreeMap<String, Spanned<B>>,
    keep: impl Fn(&B) -> bool,
    resolve: impl Fn(&str, &B) -> Result<T, String>,
) -> Result<BTreeMap<String, T>, AppError> {
    blocks
        .iter()
        .filter(|(_, block)| keep(&block.value))
        .map(|(name, block)| {
            Ok((
                name.clone(),
                resolve(name, &block.value).map_err(AppError::Usage)?,
            ))
        })
        .collect()
}

/// How many outbound publishes may wait for their broker confirmation at once.
const PUBLISH_WINDOW: usize = 1000;

pub(super) fn outbound_route(
    plan: OutboundPlan,
    dbs: &BTreeMap<String, DbSpec>,
    brokers: &BTreeMap<String, MqttSettings>,
    amqp: &BTreeMap<String, AmqpSettings>,
    leases: &Leases,
    misconfigured: &mpsc::UnboundedSender<String>,
) -> Result<OutboundRoute, AppError> {
    let wake = plan
        .wake
        .as_ref()
        .map(|w| wake_spec(&plan.name, w, &dbs[&plan.database]))
        .transpose()?;
    let poller = Poller::start(dbs[&plan.database].clone(), plan.poll.clone())
        .map_err(|e| AppError::Runtime(e.to_string()))?;
    let publisher = publisher(&plan.destination, &plan.name, brokers, amqp)?;
    let broker = plan.destination.broker;
    let metrics = leases
        .metrics
        .route(&plan.name, Kind::Outbound, &broker, &plan.database);
    Ok(OutboundRoute {
        lease: Some(leases.spec(&format!("outbound:{}", plan.name))),
        metrics,
        name: plan.name,
        broker,
        poller,
        publisher,
        state: leases.state.clone(),
        destination: plan.destination.target,
        format: plan.format,
        csv: plan.csv,
        start: plan.start,
        interval: plan.interval,
        delay: plan.delay,
        max_rows: plan.poll.max_rows,
        after_publish: plan.poll.after_publish.is_some(),
        misconfigured: misconfigured.clone(),
        snapshot_line: plan.snapshot_line,
        wake,
    })
}

/// The LISTEN connection of a route's `wake`: its own URL, else one derived from the
/// database's connection string; `password_file` sets the password in either.
pub(super) fn wake_spec(route: &str, wake: &WakePlan, db: &DbSpec) -> Result<WakeSpec, AppError> {
    let problem = |e: String| AppError::Usage(format!("route {route}: wake: {e}"));
    let url = match &wake.url {
        Some(url) => url.expose().to_string(),
        None => db.postgres_url().map_err(problem)?,
    };
    let url = match &wake.password_file {
        Some(file) => {
            let password = crate::config::password(
                &format!("route {route}: wake"),
                &None,
                &Some(crate::config::EnvString(file.clone())),
            )
            .map_err(AppError::Usage)?
            .unwrap_or_default();
            crate::connection_string::with_password(&url, &password).map_err(problem)?
        }
        None => url,
    };
    Ok(WakeSpec {
        channel: wake.channel.clone(),
        url,
    })
}

/// A confirming publisher to `to`'s broker; an MQTT one has its own session, named after
/// `user`.
fn publisher(
    to: &Destination,
    user: &str,
    brokers: &BTreeMap<String, MqttSettings>,
    amqp: &BTreeMap<String, AmqpSettings>,
) -> Result<Publisher, AppError> {
    match (brokers.get(&to.broker), amqp.get(&to.broker)) {
        (Some(settings), _) => Ok(Publisher::Mqtt(MqttPublisher::start(
            settings.clone(),
            format!("{}-{user}", settings.client_id),
            crate::broker::mqtt::qos(to.qos),
            to.retain,
            PUBLISH_WINDOW,
        ))),
        (None, Some(settings)) => Ok(Publisher::Amqp(AmqpPublisher::new(settings.clone()))),
        (None, None) => Err(AppError::Usage(format!(
            "{user}: unknown broker {}",
            to.broker
        ))),
    }
}

/// Publishers for `dlq replay`: one per outbound route, each with its own MQTT session.
pub fn replay_publishers(config: &Config) -> Result<crate::replay::MakePublisher, AppError> {
    let brokers = broker_settings(config)?;
    let amqp = amqp_settings(config)?;
    Ok(Box::new(move |plan: &OutboundPlan| {
        publisher(
            &plan.destination,
            &format!("{}-replay", plan.name),
            &brokers,
            &amqp,
        )
        .map_err(|e| e.to_string())
    }))
}

/// The dead-letter mirror, when `dead_letter.publish` is configured.
pub(super) fn mirror(
    config: &Config,
    leases: &Leases,
    brokers: &BTreeMap<String, MqttSettings>,
    amqp: &BTreeMap<String, AmqpSettings>,
) -> Result<Option<crate::mirror::Mirror>, AppError> {
    let Some(m) = config.dead_letter.as_ref().and_then(|d| d.publish.as_ref()) else {
        return Ok(None);
    };
    let to = Destination::resolve(&m.value, true).map_err(AppError::Usage)?;
    Ok(Some(crate::mirror::Mirror {
        lease: leases.spec(crate::mirror::LEASE),
        state: leases.state.clone(),
        publisher: publisher(&to, "dead-letters", brokers, amqp)?,
        target: to.target,
        broker: to.broker,
    }))
}
