//! Each route, ready to take its dead letters again: an inbound route's table and mapper,
//! an outbound route's publisher, or the reason every letter of it fails.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use tokio::runtime::Handle;

use crate::broker::publisher::Publisher;
use crate::db::DbSpec;
use crate::db::insert::TablePlan;
use crate::db::worker;
use crate::dlq::DeadLetter;
use crate::error::Class;
use crate::mapping::Mapper;
use crate::routes::{InboundPlan, OutboundPlan};
use crate::state::Failure;

use super::inbound::replay_inbound;
use super::outbound::{Outbound, replay_outbound};
use super::outcome::{Outage, Outcome, failure};

/// The configuration a replay resolves routes from.
pub struct Routes {
    pub inbound: Vec<InboundPlan>,
    pub outbound: Vec<OutboundPlan>,
    pub dbs: BTreeMap<String, DbSpec>,
    /// Builds a confirming publisher for an outbound route.
    pub publisher: MakePublisher,
}

/// Builds a confirming publisher for an outbound route.
pub type MakePublisher = Box<dyn Fn(&OutboundPlan) -> Result<Publisher, String> + Send>;

/// A route, ready to take its dead letters again.
pub(super) enum Engine {
    /// Every letter fails with this.
    Broken(Failure),
    Inbound {
        conn: crate::db::DbConn,
        table: TablePlan,
        mapper: Mapper,
    },
    Outbound {
        plan: Box<OutboundPlan>,
        publisher: Result<Publisher, String>,
        spec: DbSpec,
        db: Option<crate::db::DbConn>,
    },
    /// The route's database was unreachable when first needed.
    Unreachable(String),
}

impl Engine {
    pub(super) fn new(routes: &Routes, route: &str, direction: &str) -> Engine {
        let inbound = routes.inbound.iter().find(|p| p.name == route);
        let outbound = routes.outbound.iter().find(|p| p.name == route);
        match (direction, inbound, outbound) {
            ("inbound", Some(plan), _) => {
                match worker::connect(&routes.dbs[&plan.database], &plan.target) {
                    Ok((conn, table)) => Engine::Inbound {
                        mapper: plan.mapper(&table),
                        conn,
                        table,
                    },
                    Err(e) if e.class() == Class::Outage => Engine::Unreachable(e.to_string()),
                    Err(e) => Engine::Broken(failure("rejected", e.to_string(), e.sqlstate)),
                }
            }
            ("outbound", _, Some(plan)) => Engine::Outbound {
                publisher: (routes.publisher)(plan),
                spec: routes.dbs[&plan.database].clone(),
                db: None,
                plan: Box::new(plan.clone()),
            },
            _ => Engine::Broken(failure(
                "no_route",
                format!("route {route} is not configured as an {direction} route any more"),
                None,
            )),
        }
    }

    /// Replays `letters` (all of this route), handing the outcomes of each batch to
    /// `on_batch` (false: stop). An inbound route also stops between batches once `stop`
    /// is set, leaving the rest unattempted.
    pub(super) fn replay(
        &mut self,
        rt: &Handle,
        letters: &[DeadLetter],
        dry_run: bool,
        stop: &AtomicBool,
        on_batch: &mut dyn FnMut(Vec<Outcome>) -> bool,
    ) -> Result<(), Outage> {
        match self {
            Engine::Broken(f) => {
                on_batch(letters.iter().map(|l| (l.id, Err(f.clone()))).collect());
                Ok(())
            }
            Engine::Unreachable(e) => Err(Outage(e.clone())),
            Engine::Inbound {
                conn,
                table,
                mapper,
            } => replay_inbound(conn, table, mapper, letters, dry_run, stop, on_batch),
            Engine::Outbound {
                plan,
                publisher,
                spec,
                db,
            } => {
                let target = Outbound {
                    plan,
                    publisher,
                    spec,
                };
                on_batch(replay_outbound(rt, &target, db, letters, dry_run)?);
                Ok(())
            }
        }
    }
}
