//! Inbound letters: decoded, mapped and written to the route's table again, in batches.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::db::insert::TablePlan;
use crate::db::write::Writer;
use crate::dlq::DeadLetter;
use crate::mapping::Mapper;
use crate::message::Message;

use super::outcome::{Outage, Outcome, failure, outage};

/// Inbound letters in batches of the route's `max_rows`, each one transaction; the next
/// batch is mapped on another thread while this one is written.
pub(super) fn replay_inbound(
    conn: &crate::db::DbConn,
    table: &TablePlan,
    mapper: &Mapper,
    letters: &[DeadLetter],
    dry_run: bool,
    stop: &AtomicBool,
    on_batch: &mut dyn FnMut(Vec<Outcome>) -> bool,
) -> Result<(), Outage> {
    let mut writer = Writer::new(conn, table);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for batch in letters.chunks(table.max_rows.max(1)) {
                if tx.send(map_letters(mapper, batch)).is_err() {
                    return;
                }
            }
        });
        for mapped in rx {
            let mut outcomes = Vec::new();
            write_mapped(&mut writer, mapped, dry_run, &mut outcomes)?;
            if !on_batch(outcomes) || stop.load(Ordering::SeqCst) {
                break;
            }
        }
        Ok(())
    })
}

/// A batch of inbound letters, mapped again.
#[derive(Default)]
struct Mapped {
    /// Letters settled by mapping alone: they failed, or carry no row.
    settled: Vec<Outcome>,
    /// Letters of one row.
    single: Vec<(i64, crate::mapping::Row)>,
    /// Letters of many rows (a whole CSV message): all or nothing each, so that a failure
    /// never leaves half of one stored.
    many: Vec<(i64, Vec<crate::mapping::Row>)>,
}

fn map_letters(mapper: &Mapper, letters: &[DeadLetter]) -> Mapped {
    let mut out = Mapped::default();
    for letter in letters {
        let message = Message::from_dead_letter(
            &letter.source,
            &letter.payload,
            &letter.headers,
            mapper.reads_csv_header(),
        );
        // An element of `rows:` is mapped alone, with its index and the message around it.
        let element = letter
            .headers
            .get("index")
            .and_then(serde_json::Value::as_u64);
        if let Some(index) = element.filter(|_| mapper.explodes()) {
            let context = letter.headers.get("message");
            match mapper.map_element(&message, index as usize, context) {
                Ok(row) => out.single.push((letter.id, row)),
                Err(e) => out
                    .settled
                    .push((letter.id, Err(failure(e.kind(), e.message(), None)))),
            }
            continue;
        }
        let mapped = mapper.map(&message);
        if let Some((_, Err(e))) = mapped.iter().find(|(_, r)| r.is_err()) {
            out.settled
                .push((letter.id, Err(failure(e.kind(), e.message(), None))));
            continue;
        }
        let mut rows: Vec<crate::mapping::Row> =
            mapped.into_iter().filter_map(|(_, r)| r.ok()).collect();
        match rows.len() {
            0 => out.settled.push((letter.id, Ok(()))),
            1 => out.single.push((letter.id, rows.remove(0))),
            _ => out.many.push((letter.id, rows)),
        }
    }
    out
}

fn write_mapped(
    writer: &mut Writer<'_>,
    mapped: Mapped,
    dry_run: bool,
    outcomes: &mut Vec<Outcome>,
) -> Result<(), Outage> {
    outcomes.extend(mapped.settled);
    for (id, rows) in mapped.many {
        match writer.write_all(&rows, !dry_run).map_err(outage)? {
            Ok(()) => outcomes.push((id, Ok(()))),
            Err(e) => outcomes.push((id, Err(failure("rejected", e.message, e.sqlstate)))),
        }
    }
    if mapped.single.is_empty() {
        return Ok(());
    }
    let (ids, rows): (Vec<i64>, Vec<crate::mapping::Row>) = mapped.single.into_iter().unzip();
    let mut rejected = writer
        .write_rows(&rows, !dry_run)
        .map_err(outage)?
        .into_iter()
        .peekable();
    for (i, id) in ids.into_iter().enumerate() {
        match rejected.next_if(|(r, _)| *r == i) {
            Some((_, e)) => outcomes.push((id, Err(failure("rejected", e.message, e.sqlstate)))),
            None => outcomes.push((id, Ok(()))),
        }
    }
    Ok(())
}
