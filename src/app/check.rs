//! `mqdb check`: every route's broker, database, table or query and exchange, one line
//! each, without moving any data.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::broker::amqp::AmqpSettings;
use crate::broker::mqtt::MqttSettings;
use crate::config::Config;
use crate::destination::{Destination, Target};
use crate::routes::{Intake, inbound_plans, outbound_plans};

use super::wiring::{amqp_settings, broker_settings, db_specs};

pub use crate::error::AppError;

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
        let broker = &plan.destination.broker;
        let problem = match &broker_status[broker] {
            Err(e) => Some(format!("broker {broker}: {e}")),
            Ok(()) => {
                let spec = dbs[&plan.database].clone();
                let plan_for_db = plan.clone();
                let db = tokio::task::spawn_blocking(move || {
                    crate::db::probe::check_query(
                        &spec,
                        &plan_for_db.poll,
                        &plan_for_db.destination.target.columns(),
                        &plan_for_db.start,
                    )
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
                match db {
                    Err(e) => Some(format!("database {}: {e}", plan.database)),
                    Ok(()) => match wake_problem(plan, &dbs).await {
                        Some(p) => Some(p),
                        None => exchange_problem(&plan.destination, &amqp).await,
                    },
                }
            }
        };
        match problem {
            None => println!(
                "ok    outbound {}: {} → broker {broker}",
                plan.name, plan.database
            ),
            Some(p) => {
                failures += 1;
                println!("FAIL  outbound {}: {p}", plan.name);
            }
        }
    }
    let mirror = config.dead_letter.as_ref().and_then(|d| d.publish.as_ref());
    if let Some(m) = mirror {
        let to = Destination::resolve(&m.value, true).map_err(AppError::Usage)?;
        let broker = &to.broker;
        let problem = match &broker_status[broker] {
            Err(e) => Some(format!("broker {broker}: {e}")),
            Ok(()) => exchange_problem(&to, &amqp).await,
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
            && !outbound.iter().any(|p| &p.destination.broker == name)
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
/// Why the route's `wake` cannot LISTEN, if it has one and cannot.
async fn wake_problem(
    plan: &crate::routes::OutboundPlan,
    dbs: &std::collections::BTreeMap<String, crate::db::DbSpec>,
) -> Option<String> {
    let wake = plan.wake.as_ref()?;
    let spec = match super::wiring::wake_spec(&plan.name, wake, &dbs[&plan.database]) {
        Ok(spec) => spec,
        Err(e) => return Some(e.to_string()),
    };
    crate::outbound::wake::probe(&spec)
        .await
        .err()
        .map(|e| format!("wake: cannot LISTEN on {}: {e}", wake.channel))
}

async fn check_queue(settings: &AmqpSettings, queue: &str) -> Result<String, String> {
    let conn = settings.connect().await?;
    let depth = crate::broker::amqp_source::queue_depth(&conn, queue).await;
    let _ = conn.close(200, "check done".into()).await;
    Ok(match depth? {
        Some(n) => format!(" ({n} messages waiting)"),
        None => " (the queue does not exist yet; run declares it)".to_string(),
    })
}

/// Why `to`'s exchange cannot be published to, when it is named without templates.
async fn exchange_problem(
    to: &Destination,
    amqp: &BTreeMap<String, AmqpSettings>,
) -> Option<String> {
    match (&to.target, amqp.get(&to.broker)) {
        (Target::Amqp { exchange, .. }, Some(settings)) if exchange.columns().count() == 0 => {
            let name = exchange.render(|_| None).unwrap_or_default();
            check_exchange(settings, &name).await.err()
        }
        _ => None,
    }
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
    let (client, mut eventloop) = settings.client(options, 10);
    // rumqttc bounds each attempt by connect_timeout; this bounds a broker that accepts
    // the connection and then never answers the CONNECT.
    let bound = settings.connect_timeout + Duration::from_secs(5);
    let outcome = tokio::time::timeout(bound, async {
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(settings.explain(&e.to_string())),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "no CONNACK from {} within {bound:?}",
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
