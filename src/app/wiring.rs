//! What `run`, `check` and `dlq replay` build from a loaded configuration: database and
//! broker settings, publishers, outbound routes and the dead-letter mirror.

use std::collections::BTreeMap;

use tokio::sync::mpsc;

use crate::broker::amqp::AmqpSettings;
use crate::broker::amqp_publish::AmqpPublisher;
use crate::broker::mqtt::MqttSettings;
use crate::broker::mqtt_publish::MqttPublisher;
use crate::broker::publisher::Publisher;
use crate::config::BrokerKind;
use crate::config::Config;
use crate::db::DbSpec;
use crate::db::poll::Poller;
use crate::destination::Destination;
use crate::metrics::{Kind, Metrics};
use crate::outbound::OutboundRoute;
use crate::routes::OutboundPlan;
use crate::state::State;

pub use crate::error::AppError;

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

pub(super) fn broker_settings(config: &Config) -> Result<BTreeMap<String, MqttSettings>, AppError> {
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

pub(super) fn amqp_settings(config: &Config) -> Result<BTreeMap<String, AmqpSettings>, AppError> {
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

pub(super) fn outbound_route(
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
    let publisher = publisher(&plan.destination, &plan.name, brokers, amqp)?;
    let broker = plan.destination.broker;
    let metrics = metrics.route(&plan.name, Kind::Outbound, &broker, &plan.database);
    Ok(OutboundRoute {
        metrics,
        name: plan.name,
        broker,
        poller,
        publisher,
        state: state.clone(),
        destination: plan.destination.target,
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
    state: &State,
    brokers: &BTreeMap<String, MqttSettings>,
    amqp: &BTreeMap<String, AmqpSettings>,
) -> Result<Option<crate::mirror::Mirror>, AppError> {
    let Some(m) = config.dead_letter.as_ref().and_then(|d| d.publish.as_ref()) else {
        return Ok(None);
    };
    let to = Destination::resolve(&m.value, true).map_err(AppError::Usage)?;
    Ok(Some(crate::mirror::Mirror {
        state: state.clone(),
        publisher: publisher(&to, "dead-letters", brokers, amqp)?,
        target: to.target,
        broker: to.broker,
    }))
}
