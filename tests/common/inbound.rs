//! Reading back what inbound routes wrote: rows as string tables, booleans as the
//! databases spell them, dead-letter payloads in base64, and a lock held by the test.

use odbc_api::Connection;

use super::{Bridge, Db, odbc_connect, odbc_exec, pg_lock_waiters, try_scalar, wait_for};

/// Stands for SQL NULL in [`text_rows`].
pub const NULL: &str = "<NULL>";

/// Rows of text values as [`Db::query`] returns them, written as string tables; [`NULL`]
/// stands for SQL NULL.
pub fn text_rows<const N: usize>(rows: &[[&str; N]]) -> Vec<Vec<Option<String>>> {
    let value = |v: &&str| (*v != NULL).then(|| v.to_string());
    rows.iter().map(|r| r.iter().map(value).collect()).collect()
}

/// A boolean read back as text: PostgreSQL, MariaDB and SQLite spell them differently.
pub fn parse_bool(text: &str) -> bool {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => true,
        "0" | "f" | "false" => false,
        other => panic!("{other:?} is not a boolean"),
    }
}

/// The bytes of standard base64 `text` (padding optional); panics on anything else.
pub fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c);
        acc = (acc << 6) | v.unwrap_or_else(|| panic!("{text:?} is not base64")) as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// A connection of the test's own with autocommit off that has run `sql` (e.g. a `LOCK
/// TABLE`, or an insert of a row a batch will also write): it holds the locks `sql` took
/// until it is rolled back or dropped.
pub fn lock_holder(db: &Db, sql: &str) -> Connection<'static> {
    let holder = odbc_connect(&db.connection_string()).expect("connect the lock holder");
    holder.set_autocommit(false).expect("autocommit off");
    odbc_exec(&holder, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    holder
}

/// `column=source` pairs separated by white space (e.g. `"id=payload.id site=topic.site"`),
/// as a route's `columns:`.
pub fn pairs(spec: &str) -> Vec<(&str, &str)> {
    let mut pairs = Vec::new();
    for p in spec.split_whitespace() {
        let pair = p.split_once('=');
        pairs.push(pair.unwrap_or_else(|| panic!("{p:?} is not column=source")));
    }
    pairs
}

/// Waits until a PostgreSQL session of the bridge waits on a lock in a statement that names
/// `table` (a lock a [`lock_holder`] holds). Panics with the bridge log if it exits or after
/// the liveness deadline.
pub fn wait_lock_waiter(bridge: &mut Bridge, table: &str) {
    let sql = pg_lock_waiters(table);
    wait_for(
        bridge,
        &format!("a batch waiting on a lock on {table}"),
        || Ok(try_scalar(&Db::Postgres, &sql).unwrap_or(0) >= 1),
    );
}
