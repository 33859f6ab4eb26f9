//! `mqdb position list | set | reset`: the outbound routes' stored positions, for operators
//! who must republish from a point or skip ahead.

use std::io::IsTerminal;

use serde_json::json;

use crate::app::{AppError, open_state};
use crate::cli::{PositionChange, PositionCommand};
use crate::config::Config;
use crate::dlq_commands::{confirmed, emit};
use crate::routes::{OutboundPlan, outbound_plans};
use crate::state::State;

pub async fn run(config: Config, command: PositionCommand) -> Result<(), AppError> {
    let plans = outbound_plans(&config).map_err(AppError::Usage)?;
    match command {
        PositionCommand::List { json } => list(&config, &plans, json).await,
        PositionCommand::Set {
            route,
            values,
            change,
        } => {
            let plan = tracked(&plans, &route)?;
            if values.len() != plan.start.len() {
                return Err(AppError::Usage(format!(
                    "route {route} tracks {} column(s); give one value for each, in order",
                    plan.start.len()
                )));
            }
            change_position(&config, &route, values, &change).await
        }
        PositionCommand::Reset { route, change } => {
            let start = tracked(&plans, &route)?.start.clone();
            change_position(&config, &route, start, &change).await
        }
    }
}

/// The configured route `name`, which must track a position.
fn tracked<'a>(plans: &'a [OutboundPlan], name: &str) -> Result<&'a OutboundPlan, AppError> {
    let Some(plan) = plans.iter().find(|p| p.name == name) else {
        let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
        return Err(AppError::Usage(format!(
            "no outbound route {name}; the outbound routes are: {}",
            if names.is_empty() {
                "(none)".to_string()
            } else {
                names.join(", ")
            }
        )));
    };
    if plan.start.is_empty() {
        return Err(AppError::Usage(format!(
            "route {name} has no `track:`, so no position: it publishes every row its query returns"
        )));
    }
    Ok(plan)
}

async fn list(config: &Config, plans: &[OutboundPlan], as_json: bool) -> Result<(), AppError> {
    let state = open_state(config).await?;
    let listed = listing(&state, plans).await;
    state.close().await;
    let rows = listed.map_err(|e| AppError::Runtime(e.to_string()))?;
    let mut out = String::new();
    for row in &rows {
        if as_json {
            out.push_str(&format!("{row}\n"));
            continue;
        }
        let held = match row["held_by"].as_str() {
            Some(instance) => format!("held by {instance}"),
            None => "not held".into(),
        };
        let position = match row["updated_at"].as_str() {
            Some(at) => format!("{}  moved {at}", row["position"]),
            None => format!("(none stored: starts at {})", row["start"]),
        };
        out.push_str(&format!(
            "{:<32} {position}  {held}\n",
            row["route"].as_str().unwrap_or_default()
        ));
    }
    if rows.is_empty() {
        out.push_str("no outbound route tracks a position\n");
    }
    emit(&out);
    Ok(())
}

/// One object per configured route that tracks a position, then any other route with a
/// stored position (removed from the configuration since).
async fn listing(
    state: &State,
    plans: &[OutboundPlan],
) -> Result<Vec<serde_json::Value>, crate::state::StateError> {
    let stored = state.positions().await?;
    let (leases, now) = state.leases().await?;
    let holder = |route: &str| {
        let name = format!("outbound:{route}");
        leases
            .iter()
            .find(|l| l.name == name && l.expires_at > now)
            .map(|l| l.instance.clone())
    };
    let mut rows = Vec::new();
    for plan in plans.iter().filter(|p| !p.start.is_empty()) {
        let found = stored.iter().find(|(route, ..)| *route == plan.name);
        rows.push(json!({
            "route": plan.name,
            "position": found.map(|(_, p, _)| p.clone()),
            "updated_at": found.map(|(.., at)| at.clone()),
            "start": plan.start,
            "held_by": holder(&plan.name),
        }));
    }
    for (route, position, at) in &stored {
        if !plans.iter().any(|p| p.name == *route) {
            rows.push(json!({
                "route": route,
                "position": position,
                "updated_at": at,
                "start": null,
                "held_by": holder(route),
            }));
        }
    }
    Ok(rows)
}

async fn change_position(
    config: &Config,
    route: &str,
    position: Vec<String>,
    change: &PositionChange,
) -> Result<(), AppError> {
    let shown = serde_json::to_string(&position).unwrap_or_default();
    if !change.yes {
        if !std::io::stdin().is_terminal() {
            return Err(AppError::Usage(format!(
                "add --yes to set the position of route {route} to {shown} without a terminal to confirm on"
            )));
        }
        if !confirmed(&format!("set the position of route {route} to {shown}?")) {
            println!("position unchanged");
            return Ok(());
        }
    }
    let state = open_state(config).await?;
    let result = state.set_position(route, &position, change.force).await;
    state.close().await;
    match result.map_err(|e| AppError::Runtime(e.to_string()))? {
        Ok(()) => {
            println!("route {route}: position set to {shown}");
            Ok(())
        }
        Err(instance) => Err(AppError::Usage(format!(
            "route {route} is held by running instance {instance}: stop it first, or add --force \
             (the instance then reads the new position when it takes the route again)"
        ))),
    }
}
