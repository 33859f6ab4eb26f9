//! The operator's commands on the dead-letter queue: `dlq list`, `show`, `replay`, `purge`.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};

use crate::app::open_state;
use crate::app::{self, AppError};
use crate::cli::Selection;
use crate::config::Config;
use crate::dlq;
use crate::replay::{self, Routes};
use crate::routes::{inbound_plans, outbound_plans};
use crate::state::{DeadLetterFilter, State};

/// `mqdb dlq list`.
pub async fn list(
    config: Config,
    route: Option<String>,
    since: Option<String>,
    error_kind: Option<String>,
    as_json: bool,
) -> Result<(), AppError> {
    let state = open_state(&config).await?;
    let filter = DeadLetterFilter {
        route,
        since: since.as_deref().map(instant).transpose()?,
        error_kind,
        ..Default::default()
    };
    known_values(&config, &state, &filter).await?;
    let letters = state
        .list_dead_letters(&filter)
        .await
        .map_err(|e| AppError::Runtime(e.to_string()))?;
    if as_json {
        for letter in &letters {
            emit(&format!("{}\n", letter.to_json()));
        }
    } else if letters.is_empty() {
        let filtered =
            filter.route.is_some() || filter.since.is_some() || filter.error_kind.is_some();
        if filtered {
            println!("no dead letters match");
        } else {
            println!("the dead-letter queue is empty");
        }
    } else {
        emit(&dlq::render_table(&letters));
    }
    Ok(())
}

/// `mqdb dlq show ID`.
pub async fn show(config: Config, id: i64) -> Result<(), AppError> {
    let state = open_state(&config).await?;
    match state
        .dead_letter(id)
        .await
        .map_err(|e| AppError::Runtime(e.to_string()))?
    {
        Some(letter) => {
            emit(&letter.details());
            Ok(())
        }
        None => Err(AppError::Runtime(format!("no dead letter with id {id}"))),
    }
}

/// `mqdb dlq replay`: exit 0 only if every selected dead letter was delivered.
pub async fn replay(
    config: Config,
    selection: Selection,
    error_kind: Option<String>,
    dry_run: bool,
) -> Result<(), AppError> {
    let mut filter = selected(&selection)?;
    filter.error_kind = error_kind;
    let state = open_state(&config).await?;
    known_values(&config, &state, &filter).await?;
    missing_ids(&state, &filter).await?;
    let routes = Routes {
        inbound: inbound_plans(&config).map_err(AppError::Usage)?,
        outbound: outbound_plans(&config).map_err(AppError::Usage)?,
        dbs: app::db_specs(&config)?,
        publisher: app::replay_publishers(&config)?,
    };
    // An interrupt finishes the batch at hand, so nothing is left half done.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let watcher = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Ordering::SeqCst);
        }
    });
    let rt = tokio::runtime::Handle::current();
    let worker_state = state.clone();
    let summary = tokio::task::spawn_blocking(move || {
        replay::replay(&rt, routes, &worker_state, filter, dry_run, &stop)
    })
    .await
    .map_err(|e| AppError::Runtime(format!("replay stopped: {e}")))?
    .map_err(AppError::Runtime)?;
    watcher.abort();
    state.close().await;
    println!("{}", summary.render());
    if summary.succeeded() {
        Ok(())
    } else if summary.failures() == 0
        && summary.held > 0
        && !summary.interrupted
        && summary.outage.is_none()
    {
        Err(AppError::Runtime(format!(
            "{} dead letters were held by another replay and not attempted",
            summary.held
        )))
    } else {
        Err(AppError::Runtime(if summary.interrupted {
            "replay interrupted".into()
        } else if summary.outage.is_some() {
            "replay stopped by an outage".into()
        } else if dry_run {
            format!(
                "{} dead letters would fail (dry run: nothing was changed)",
                summary.failures()
            )
        } else {
            format!("{} dead letters failed again", summary.failures())
        }))
    }
}

/// `mqdb dlq purge`: asks first on a terminal, unless `--yes`.
pub async fn purge(
    config: Config,
    selection: Selection,
    before: Option<String>,
    yes: bool,
) -> Result<(), AppError> {
    let mut filter = match (&selection, &before) {
        // `--before` alone is a selection of its own.
        (s, Some(_)) if !s.all && s.id.is_empty() && s.route.is_none() => {
            DeadLetterFilter::default()
        }
        _ => selected(&selection).map_err(|_| {
            AppError::Usage(
                "choose the dead letters with exactly one of --all, --id ID…, --route ROUTE \
                 or --before TIME (which may also narrow one of the others)"
                    .into(),
            )
        })?,
    };
    filter.before = before.as_deref().map(instant).transpose()?;
    let state = open_state(&config).await?;
    known_values(&config, &state, &filter).await?;
    let count = state
        .count_dead_letters(&filter)
        .await
        .map_err(|e| AppError::Runtime(e.to_string()))?;
    if count == 0 {
        println!("no dead letters match; nothing purged");
        return Ok(());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(AppError::Usage(format!(
                "{count} dead letters match; add --yes to purge them without a terminal to confirm on"
            )));
        }
        if !confirmed(&format!("purge {count} dead letters for good?")) {
            println!("nothing purged");
            return Ok(());
        }
    }
    let purged = state
        .purge_dead_letters(&filter)
        .await
        .map_err(|e| AppError::Runtime(e.to_string()))?;
    state.close().await;
    println!("purged {purged} dead letters");
    if purged < count {
        println!("{} were being replayed and were left alone", count - purged);
    }
    Ok(())
}

/// The error kinds mqdb writes; a store may hold others from another version.
const ERROR_KINDS: [&str; 9] = [
    "decode",
    "convert",
    "rejected",
    "too_large",
    "topic",
    "unroutable",
    "nacked",
    "after_publish",
    "value",
];

/// `--route` and `--error-kind` must name something that exists: a typo would otherwise
/// read as "no dead letters match". Valid are the configured routes and the kinds mqdb
/// writes, and whatever the store holds.
async fn known_values(
    config: &Config,
    state: &State,
    filter: &DeadLetterFilter,
) -> Result<(), AppError> {
    use crate::state::DeadLetterField;
    let stored = async |field| {
        state
            .dead_letter_values(field)
            .await
            .map_err(|e| AppError::Runtime(e.to_string()))
    };
    if let Some(route) = &filter.route {
        let mut valid: Vec<String> = config
            .inbound
            .iter()
            .map(|r| r.value.name.value.to_string())
            .chain(
                config
                    .outbound
                    .iter()
                    .map(|r| r.value.name.value.to_string()),
            )
            .chain(stored(DeadLetterField::Route).await?)
            .collect();
        unknown("--route", route, &mut valid)?;
    }
    if let Some(kind) = &filter.error_kind {
        let mut valid: Vec<String> = ERROR_KINDS
            .iter()
            .map(|k| k.to_string())
            .chain(stored(DeadLetterField::ErrorKind).await?)
            .collect();
        unknown("--error-kind", kind, &mut valid)?;
    }
    Ok(())
}

fn unknown(flag: &str, value: &str, valid: &mut Vec<String>) -> Result<(), AppError> {
    valid.sort();
    valid.dedup();
    if valid.iter().any(|v| v == value) {
        return Ok(());
    }
    let listed = if valid.is_empty() {
        "none".to_string()
    } else {
        valid.join(", ")
    };
    Err(AppError::Usage(format!(
        "{flag} {value}: no such value; valid: {listed}"
    )))
}

/// `--id` must name stored dead letters: a mistyped id is not silently left out.
async fn missing_ids(state: &State, filter: &DeadLetterFilter) -> Result<(), AppError> {
    if filter.ids.is_empty() {
        return Ok(());
    }
    let only_ids = DeadLetterFilter {
        ids: filter.ids.clone(),
        ..Default::default()
    };
    let found: Vec<i64> = state
        .list_dead_letters(&only_ids)
        .await
        .map_err(|e| AppError::Runtime(e.to_string()))?
        .iter()
        .map(|l| l.id)
        .collect();
    let missing: Vec<String> = filter
        .ids
        .iter()
        .filter(|id| !found.contains(id))
        .map(|id| id.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(AppError::Usage(format!(
        "no dead letter with id {} (see `mqdb dlq list`); nothing was replayed",
        missing.join(", ")
    )))
}

/// Exactly one of `--all`, `--id`, `--route`.
fn selected(selection: &Selection) -> Result<DeadLetterFilter, AppError> {
    let chosen = [
        selection.all,
        !selection.id.is_empty(),
        selection.route.is_some(),
    ]
    .iter()
    .filter(|c| **c)
    .count();
    if chosen != 1 {
        return Err(AppError::Usage(
            "choose the dead letters with exactly one of --all, --id ID… or --route ROUTE".into(),
        ));
    }
    Ok(DeadLetterFilter {
        route: selection.route.clone(),
        ids: selection.id.clone(),
        ..Default::default()
    })
}

/// An RFC 3339 time, or a duration ago (`2h`, `7d`), as the store writes times.
fn instant(text: &str) -> Result<String, AppError> {
    let at = match DateTime::parse_from_rfc3339(text.trim()) {
        Ok(t) => t.with_timezone(&Utc),
        Err(_) => {
            let ago = crate::config::parse_duration(text).map_err(|_| {
                AppError::Usage(format!(
                    "`{text}` is neither an RFC 3339 time (2024-05-01T00:00:00Z) nor a duration ago (2h, 7d)"
                ))
            })?;
            Utc::now()
                - chrono::Duration::from_std(ago)
                    .map_err(|_| AppError::Usage(format!("`{text}` is too long ago")))?
        }
    };
    Ok(at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// Asks `question` on the terminal; true for a yes.
pub fn confirmed(question: &str) -> bool {
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes")
}

/// Writes to stdout; a reader that went away (`mqdb dlq list --json | head -1`) ends the
/// command quietly, as it does for other command-line tools, instead of a panic.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_normalised() {
        assert_eq!(
            instant("2024-05-01T02:00:00+02:00").unwrap(),
            "2024-05-01T00:00:00.000Z"
        );
        let ago = instant("1d").unwrap();
        let parsed = DateTime::parse_from_rfc3339(&ago).unwrap();
        let hours = (Utc::now() - parsed.with_timezone(&Utc)).num_hours();
        assert!((23..=24).contains(&hours), "{ago}");
        assert!(instant("yesterday").is_err());
    }

    #[test]
    fn a_selection_is_exactly_one_choice() {
        let s = |all, id: Vec<i64>, route: Option<&str>| Selection {
            all,
            id,
            route: route.map(str::to_string),
        };
        assert!(selected(&s(false, vec![], None)).is_err());
        assert!(selected(&s(true, vec![1], None)).is_err());
        assert_eq!(
            selected(&s(false, vec![1, 2], None)).unwrap().ids,
            vec![1, 2]
        );
        assert_eq!(
            selected(&s(false, vec![], Some("r")))
                .unwrap()
                .route
                .as_deref(),
            Some("r")
        );
    }
}
