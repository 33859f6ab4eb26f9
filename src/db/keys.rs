//! What `check` asks of a table beyond its columns: the unique keys an `on_conflict` rule
//! needs, and the name a table really has when it was written in another case.

use odbc_api::{Connection, Cursor, IntoParameter};

use super::dialect::Dialect;
use crate::error::DbError;

/// The column sets of `table`'s primary key and unique constraints or indexes that an
/// upsert can use (no partial, expression or deferrable ones); `None` where the dialect has no
/// catalog query here.
pub fn unique_keys(
    conn: &Connection<'_>,
    dialect: Dialect,
    table: &str,
) -> Result<Option<Vec<Vec<String>>>, DbError> {
    let (sql, params): (&str, Vec<String>) = match dialect {
        Dialect::Postgres => (
            "SELECT CAST(i.indexrelid AS bigint), a.attname FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = to_regclass(?) AND i.indisunique AND i.indimmediate \
             AND i.indpred IS NULL AND i.indexprs IS NULL",
            vec![dialect.quote_table(table)],
        ),
        Dialect::MySql => match table.split_once('.') {
            Some((schema, name)) => (
                "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0",
                vec![schema.to_string(), name.to_string()],
            ),
            None => (
                "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND NON_UNIQUE = 0",
                vec![table.to_string()],
            ),
        },
        // An INTEGER PRIMARY KEY is the rowid and has no index of its own: table_info
        // reports it.
        Dialect::Sqlite => (
            "SELECT il.name, ii.name FROM pragma_index_list(?) il \
             JOIN pragma_index_info(il.name) ii WHERE il.\"unique\" = 1 AND il.partial = 0 \
             UNION ALL SELECT '', name FROM pragma_table_info(?) WHERE pk > 0",
            vec![table.to_string(), table.to_string()],
        ),
        Dialect::Generic => return Ok(None),
    };
    let odbc = |e: odbc_api::Error| DbError::from_odbc(&e);
    let params: Vec<_> = params.iter().map(|p| p.as_str().into_parameter()).collect();
    // (index, column); a column of None is an expression, which no key list can name.
    let mut found: Vec<(String, Option<String>)> = Vec::new();
    if let Some(mut cursor) = conn.execute(sql, params.as_slice(), None).map_err(odbc)? {
        let (mut index, mut column) = (Vec::new(), Vec::new());
        while let Some(mut row) = cursor.next_row().map_err(odbc)? {
            row.get_text(1, &mut index).map_err(odbc)?;
            let named = row.get_text(2, &mut column).map_err(odbc)?;
            found.push((
                String::from_utf8_lossy(&index).into_owned(),
                named.then(|| String::from_utf8_lossy(&column).into_owned()),
            ));
        }
    }
    let _ = conn.commit();
    let mut keys: Vec<(String, Option<Vec<String>>)> = Vec::new();
    for (index, column) in found {
        let at = match keys.iter().position(|(i, _)| *i == index) {
            Some(at) => at,
            None => {
                keys.push((index, Some(Vec::new())));
                keys.len() - 1
            }
        };
        match (column, &mut keys[at].1) {
            (Some(c), Some(columns)) => columns.push(c),
            (None, slot) => *slot = None,
            (Some(_), None) => {}
        }
    }
    Ok(Some(keys.into_iter().filter_map(|(_, c)| c).collect()))
}

/// Whether `key` is exactly one of `keys`, in any order (names compared without case, as
/// the catalog may spell them differently from the configuration).
pub fn matches_a_key(key: &[String], keys: &[Vec<String>]) -> bool {
    let norm = |names: &[String]| {
        let mut n: Vec<String> = names.iter().map(|s| s.to_lowercase()).collect();
        n.sort();
        n.dedup();
        n
    };
    let wanted = norm(key);
    keys.iter().any(|k| norm(k) == wanted)
}

/// How the keys are listed in a message: `(id), (site, ts)`, or `none`.
pub fn describe_keys(keys: &[Vec<String>]) -> String {
    if keys.is_empty() {
        return "none".to_string();
    }
    keys.iter()
        .map(|k| format!("({})", k.join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The name a table has when `table` matches it only without regard to case.
pub fn table_in_other_case(
    conn: &Connection<'_>,
    dialect: Dialect,
    table: &str,
) -> Result<Option<String>, DbError> {
    let (schema, name) = match table.split_once('.') {
        Some((s, t)) => (Some(s), t),
        None => (None, table),
    };
    let (catalog_arg, schema_arg) = match (dialect, schema) {
        (Dialect::MySql, Some(s)) => (s, ""),
        (_, Some(s)) => ("", s),
        (_, None) => ("", ""),
    };
    let odbc = |e: odbc_api::Error| DbError::from_odbc(&e);
    let mut found = None;
    for row in conn
        .tables(catalog_arg, schema_arg, "%", "")
        .map_err(odbc)?
    {
        let row = row.map_err(odbc)?;
        let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        let Some(candidate) = text(row.table.as_bytes()) else {
            continue;
        };
        if candidate != name && candidate.eq_ignore_ascii_case(name) {
            found = Some(match (schema, text(row.schema.as_bytes())) {
                (Some(_), Some(s)) if !s.is_empty() => format!("{s}.{candidate}"),
                _ => candidate,
            });
            break;
        }
    }
    let _ = conn.commit();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_key_matches_a_unique_set_in_any_order_and_case() {
        let keys = vec![names(&["id"]), names(&["site", "ts"])];
        assert!(matches_a_key(&names(&["ts", "SITE"]), &keys));
        assert!(matches_a_key(&names(&["id"]), &keys));
        assert!(!matches_a_key(&names(&["site"]), &keys));
        assert!(!matches_a_key(&names(&["site", "ts", "id"]), &keys));
        assert!(!matches_a_key(&names(&["id"]), &[]));
    }

    #[test]
    fn keys_are_described_for_the_operator() {
        assert_eq!(describe_keys(&[]), "none");
        assert_eq!(
            describe_keys(&[names(&["id"]), names(&["site", "ts"])]),
            "(id), (site, ts)"
        );
    }
}
