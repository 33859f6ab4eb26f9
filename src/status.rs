//! `mqdb status`: what the state store knows about the bridge, whichever instance asks:
//! the instances seen recently, who holds each lease, when each route last did work, each
//! outbound route's position and the dead letters per route and kind.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat};
use serde_json::{Value as Json, json};

use crate::app::{AppError, open_state};
use crate::config::Config;
use crate::state::{InstanceRow, LeaseRow, State, WorkRow};

/// Instances not seen for this long are left out.
const RECENT: Duration = Duration::from_secs(24 * 3600);

pub async fn status(config: Config, as_json: bool) -> Result<(), AppError> {
    let state = open_state(&config).await?;
    let configured: Vec<(String, &'static str)> = config
        .inbound
        .iter()
        .map(|r| (r.value.name.value.to_string(), "inbound"))
        .chain(
            config
                .outbound
                .iter()
                .map(|r| (r.value.name.value.to_string(), "outbound")),
        )
        .collect();
    let report = gather(&state, config.lease, &configured).await;
    state.close().await;
    let report = report.map_err(|e| AppError::Runtime(e.to_string()))?;
    let text = if as_json {
        format!("{}\n", report)
    } else {
        render(&report)
    };
    crate::dlq_commands::emit(&text);
    Ok(())
}

/// The status document (`--json`), read from the store.
pub async fn gather(
    state: &State,
    lease: Duration,
    configured: &[(String, &'static str)],
) -> Result<Json, crate::state::StateError> {
    let instances = state.instances(RECENT).await?;
    let work = state.route_work().await?;
    let (leases, now) = state.leases().await?;
    let positions = state.positions().await?;
    let counts = state.dead_letter_counts().await?;
    // An instance counts as running while it has been seen within a lease: it refreshes
    // its row every third of one.
    let live_within = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let instances: Vec<Json> = instances
        .iter()
        .map(|i| instance_json(i, now, live_within))
        .collect();
    let leases: Vec<Json> = leases.iter().map(|l| lease_json(l, now)).collect();
    let positions: Vec<Json> = positions
        .into_iter()
        .map(|(route, position, updated_at)| {
            json!({"route": route, "position": position, "updated_at": updated_at})
        })
        .collect();
    let total: i64 = counts.iter().map(|(_, _, n)| n).sum();
    let dead_letters: Vec<Json> = counts
        .into_iter()
        .map(|(route, kind, count)| json!({"route": route, "error_kind": kind, "count": count}))
        .collect();
    Ok(json!({
        "now": time(now),
        "instances": instances,
        "leases": leases,
        "routes": routes_json(configured, &work, now),
        "positions": positions,
        "dead_letters": {"total": total, "by_route": dead_letters},
    }))
}

/// Each route, configured or seen at work, with when it last did work and on which
/// instance, and what it moved on each.
fn routes_json(configured: &[(String, &'static str)], work: &[WorkRow], now: i64) -> Vec<Json> {
    let mut names: Vec<(String, String)> = configured
        .iter()
        .map(|(r, d)| (r.clone(), d.to_string()))
        .chain(work.iter().map(|w| (w.route.clone(), w.direction.clone())))
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|(route, direction)| {
            let rows: Vec<&WorkRow> = work
                .iter()
                .filter(|w| w.route == route && w.direction == direction)
                .collect();
            let latest = rows.iter().max_by_key(|w| w.work_at);
            let by_instance: Vec<Json> = rows
                .iter()
                .map(|w| json!({"instance": w.instance, "moved": w.moved, "last_work_at": time(w.work_at)}))
                .collect();
            json!({
                "route": route,
                "direction": direction,
                "configured": configured.iter().any(|(r, d)| *r == route && *d == direction),
                "last_work_at": latest.map(|w| time(w.work_at)),
                "last_work_ago_seconds": latest.map(|w| seconds(now - w.work_at)),
                "last_work_instance": latest.map(|w| w.instance.clone()),
                "moved": rows.iter().map(|w| w.moved).sum::<i64>(),
                "by_instance": by_instance,
            })
        })
        .collect()
}

fn instance_json(i: &InstanceRow, now: i64, live_within: i64) -> Json {
    let state = match i.stopped_at {
        Some(_) => "stopped",
        None if now - i.seen_at <= live_within => "running",
        None => "gone",
    };
    json!({
        "instance": i.instance,
        "process": i.holder,
        "state": state,
        "version": i.version,
        "started_at": time(i.started_at),
        "seen_at": time(i.seen_at),
        "seen_ago_seconds": seconds(now - i.seen_at),
    })
}

fn lease_json(l: &LeaseRow, now: i64) -> Json {
    json!({
        "lease": l.name,
        "instance": l.instance,
        "process": l.holder,
        "epoch": l.epoch,
        "since": time(l.since),
        "expires_at": time(l.expires_at),
        "held": l.expires_at > now,
        "expires_in_seconds": seconds(l.expires_at - now),
    })
}

fn time(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn seconds(ms: i64) -> f64 {
    (ms as f64 / 100.0).round() / 10.0
}

/// The document as aligned text for people.
fn render(report: &Json) -> String {
    let list = |key: &str| report[key].as_array().cloned().unwrap_or_default();
    let s = |v: &Json| match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let instances = list("instances");
    out.push_str(&format!("instances ({}):\n", instances.len()));
    for i in &instances {
        out.push_str(&format!(
            "  {:<24} {:<8} started {}  seen {}s ago  version {}\n",
            s(&i["instance"]),
            s(&i["state"]),
            s(&i["started_at"]),
            s(&i["seen_ago_seconds"]),
            s(&i["version"])
        ));
    }
    let leases = list("leases");
    out.push_str(&format!("leases ({}):\n", leases.len()));
    for l in &leases {
        let until = if l["held"].as_bool() == Some(true) {
            format!("expires in {}s", s(&l["expires_in_seconds"]))
        } else {
            "expired: free to take".to_string()
        };
        out.push_str(&format!(
            "  {:<32} {:<24} epoch {:<4} since {}  {until}\n",
            s(&l["lease"]),
            s(&l["instance"]),
            s(&l["epoch"]),
            s(&l["since"]),
        ));
    }
    let routes = list("routes");
    out.push_str(&format!("routes ({}):\n", routes.len()));
    for r in &routes {
        let last = match r["last_work_at"].as_str() {
            Some(at) => format!(
                "last work {at} ({}s ago, on {})",
                s(&r["last_work_ago_seconds"]),
                s(&r["last_work_instance"])
            ),
            None => "no work recorded".to_string(),
        };
        let removed = if r["configured"].as_bool() == Some(true) {
            ""
        } else {
            "  (not in this configuration)"
        };
        out.push_str(&format!(
            "  {:<32} {:<8} moved {:<10} {last}{removed}\n",
            s(&r["route"]),
            s(&r["direction"]),
            s(&r["moved"]),
        ));
    }
    let positions = list("positions");
    out.push_str(&format!("outbound positions ({}):\n", positions.len()));
    for p in &positions {
        out.push_str(&format!(
            "  {:<32} {}  updated {}\n",
            s(&p["route"]),
            p["position"],
            s(&p["updated_at"])
        ));
    }
    let dead = &report["dead_letters"];
    out.push_str(&format!("dead letters ({}):\n", s(&dead["total"])));
    for d in dead["by_route"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<32} {:<16} {}\n",
            s(&d["route"]),
            s(&d["error_kind"]),
            s(&d["count"])
        ));
    }
    out
}
