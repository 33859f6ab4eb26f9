//! Raw insert ceilings: the same rows, in the same batches, through the same drivers, by
//! the fastest plain ODBC path for each, one commit per batch; and PostgreSQL's `COPY`
//! (through `psql`) as the physical reference.

use std::time::Instant;

use odbc_api::buffers::BufferDesc;
use odbc_api::{BindParamDesc, Connection, DataType, IntoParameter};

use crate::common::{Db, TempTable};
use crate::load::{self, BATCH, COLUMN_NAMES, Reading};

const RECEIVED_AT: &str = "2024-05-01 10:00:00.000";

/// Inserts one batch; made once per table, so it can keep prepared statements.
type Insert<'c> = Box<dyn FnMut(&[Reading]) + 'c>;

fn fields(r: &Reading) -> [&str; 6] {
    [
        &r.site,
        &r.device,
        &r.value,
        r.status,
        &r.ts_utc,
        RECEIVED_AT,
    ]
}

/// Inserts `n` readings in batches on a fresh table with autocommit off, one commit per
/// batch, and checks the count.
fn timed(
    db: &Db,
    n: usize,
    make: impl for<'c> FnOnce(&'c Connection<'static>, &'c str) -> Insert<'c>,
) -> f64 {
    let table = TempTable::create(db, "bench_raw", load::columns(db));
    let rows: Vec<Reading> = (0..n).map(load::reading).collect();
    let conn = db.connect();
    if *db == Db::Postgres {
        conn.execute("SET TIME ZONE 'UTC'", (), None).unwrap();
    }
    conn.set_autocommit(false).unwrap();
    let rate = {
        let mut insert = make(&conn, &table.name);
        let start = Instant::now();
        for chunk in rows.chunks(BATCH) {
            insert(chunk);
            conn.commit().unwrap();
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    assert_eq!(table.count(), n as i64, "raw insert into {}", db.label());
    rate
}

/// PostgreSQL's array literal of `values`, every element quoted.
fn array<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from("{");
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in v.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// PostgreSQL, one prepared `INSERT … SELECT * FROM unnest(…)` per batch: psqlODBC's
/// fastest path.
pub fn postgres_unnest(n: usize) -> f64 {
    timed(&Db::Postgres, n, |conn, table| {
        let sql = format!(
            "INSERT INTO {table} ({}) SELECT * FROM unnest(?::bigint[],?::text[],?::text[],?::numeric[],?::text[],?::timestamptz[],?::timestamptz[])",
            COLUMN_NAMES.join(",")
        );
        let mut prepared = conn.prepare(&sql).unwrap();
        Box::new(move |chunk| {
            let seqs: Vec<String> = chunk.iter().map(|r| r.seq.to_string()).collect();
            let mut arrays = vec![array(seqs.iter().map(String::as_str))];
            for c in 0..6 {
                arrays.push(array(chunk.iter().map(|r| fields(r)[c])));
            }
            let params: Vec<_> = arrays.iter().map(|a| a.as_str().into_parameter()).collect();
            prepared.execute(params.as_slice()).unwrap();
        })
    })
}

/// One multi-row `INSERT … VALUES` of text parameters per batch, prepared once: SQLite's
/// fastest path, and PostgreSQL's second best.
pub fn multi_row_values(db: &Db, n: usize) -> f64 {
    timed(db, n, |conn, table| {
        let row = format!("({})", vec!["?"; COLUMN_NAMES.len()].join(","));
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES {}",
            COLUMN_NAMES.join(","),
            vec![row.as_str(); BATCH].join(",")
        );
        let mut prepared = conn.prepare(&sql).unwrap();
        Box::new(move |chunk| {
            let seqs: Vec<String> = chunk.iter().map(|r| r.seq.to_string()).collect();
            let mut params = Vec::with_capacity(chunk.len() * COLUMN_NAMES.len());
            for (r, seq) in chunk.iter().zip(&seqs) {
                params.push(seq.as_str().into_parameter());
                params.extend(fields(r).map(|f| f.into_parameter()));
            }
            assert_eq!(chunk.len(), BATCH, "the load is a whole number of batches");
            prepared.execute(params.as_slice()).unwrap();
        })
    })
}

/// MariaDB, one prepared single-row statement over column-wise parameter arrays, its
/// buffers bound once: the driver's bulk protocol.
pub fn mariadb_arrays(n: usize) -> f64 {
    timed(&Db::MariaDb, n, |conn, table| {
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES (?,?,?,?,?,?,?)",
            COLUMN_NAMES.join(",")
        );
        let text = |len: usize| BindParamDesc {
            buffer_desc: BufferDesc::Text { max_str_len: len },
            data_type: DataType::Varchar {
                length: std::num::NonZeroUsize::new(len),
            },
        };
        let descs = [
            BindParamDesc::i64(false),
            text(16),
            text(16),
            text(16),
            text(16),
            text(32),
            text(32),
        ];
        let prepared = conn.prepare(&sql).unwrap();
        let mut inserter = prepared.into_column_inserter(BATCH, descs).unwrap();
        Box::new(move |chunk| {
            inserter.set_num_rows(chunk.len());
            let seqs = inserter.column_mut(0).as_slice::<i64>().unwrap();
            for (r, reading) in chunk.iter().enumerate() {
                seqs[r] = reading.seq;
            }
            for c in 0..6 {
                let mut col = inserter.column_mut(c + 1).as_text().unwrap();
                for (r, reading) in chunk.iter().enumerate() {
                    col.set_cell(r, Some(fields(reading)[c].as_bytes()));
                }
            }
            inserter.execute().unwrap();
        })
    })
}

/// PostgreSQL `COPY … FROM` a CSV file through `psql \copy`, one transaction: the
/// physical reference, not an ODBC path.
pub fn postgres_copy(n: usize) -> f64 {
    let db = Db::Postgres;
    let table = TempTable::create(&db, "bench_copy", load::columns(&db));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.csv");
    let mut csv = String::new();
    for r in (0..n).map(load::reading) {
        let [site, device, value, status, ts, received] = fields(&r);
        csv.push_str(&format!(
            "{},{site},{device},{value},{status},{ts},{received}\n",
            r.seq
        ));
    }
    std::fs::write(&path, csv).unwrap();
    let copy = format!(
        "\\copy {} ({}) FROM '{}' CSV",
        table.name,
        COLUMN_NAMES.join(","),
        path.display()
    );
    let start = Instant::now();
    let out = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "root", "-d", "test", "-q"])
        .args(["-c", "SET TIME ZONE 'UTC'", "-c", &copy])
        .output()
        .expect("run psql");
    let rate = n as f64 / start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "psql \\copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(table.count(), n as i64, "COPY");
    rate
}
