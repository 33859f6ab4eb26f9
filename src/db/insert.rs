//! Insert statements and their parameters. The strategy depends on the driver, by
//! measurement: PostgreSQL takes a batch as one `unnest` of array parameters, MariaDB as
//! column-wise parameter arrays, SQLite as one multi-row `INSERT … VALUES (…),(…)`; other
//! databases get standard SQL.

use odbc_api::parameter::{InputParameter, VarBinaryBox, VarCharBox, WithDataType};
use odbc_api::sys::{Date, Timestamp};
use odbc_api::{Bit, DataType, IntoParameter, Nullable};

use super::catalog::CatalogColumn;
use super::dialect::Dialect;
use crate::config::OnConflict;
use crate::convert::{SqlKind, Value};
use crate::mapping::Row;

/// Everything needed to write rows of one route into its table.
#[derive(Debug, Clone)]
pub struct TablePlan {
    pub dialect: Dialect,
    /// Quoted table name.
    pub table: String,
    pub columns: Vec<CatalogColumn>,
    pub on_conflict: OnConflict,
    /// Indexes into `columns`.
    pub key: Vec<usize>,
    pub max_rows: usize,
}

/// How the rows of a batch reach the table, chosen per driver by measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// One `INSERT … SELECT * FROM unnest(…)` with an array parameter per column:
    /// PostgreSQL (see [`super::postgres`]).
    Unnest,
    /// One `INSERT … VALUES (…),(…)` per chunk: the SQLite driver, and PostgreSQL columns
    /// that cannot travel in an array (array-typed columns).
    MultiRowValues,
    /// A single-row statement over column-wise parameter arrays: MariaDB's bulk protocol.
    ParameterArrays,
}

impl TablePlan {
    /// Why text with NUL cannot be stored here, where it cannot: PostgreSQL text holds no
    /// NUL, and through ODBC drivers of unknown databases a NUL may end the value early.
    pub fn nul_in_text_refused(&self) -> Option<&'static str> {
        match self.dialect {
            Dialect::Postgres => Some("PostgreSQL text cannot hold"),
            Dialect::Generic => {
                Some("the generic dialect does not store, since drivers may cut text at NUL")
            }
            Dialect::MySql | Dialect::Sqlite => None,
        }
    }

    /// How many significant digits a decimal keeps here, where not all: SQLite stores a
    /// DECIMAL value that is not a 64-bit integer as a double.
    pub fn decimal_digits_kept(&self) -> Option<usize> {
        (self.dialect == Dialect::Sqlite).then_some(15)
    }

    /// The strategy for rows that bind the columns at `present`.
    pub fn strategy(&self, present: &[usize]) -> Strategy {
        match self.dialect {
            Dialect::MySql => Strategy::ParameterArrays,
            Dialect::Postgres
                if present
                    .iter()
                    .all(|&c| self.columns[c].array_type.is_some()) =>
            {
                Strategy::Unnest
            }
            _ => Strategy::MultiRowValues,
        }
    }

    /// Rows one statement may carry when it binds the columns at `present`.
    pub fn rows_per_statement(&self, present: &[usize]) -> usize {
        if self.uses_merge() {
            return 1;
        }
        match self.strategy(present) {
            Strategy::Unnest | Strategy::ParameterArrays => self.max_rows.max(1),
            Strategy::MultiRowValues => (self.dialect.max_parameters() / present.len().max(1))
                .clamp(1, self.max_rows.max(1)),
        }
    }

    /// The `unnest` statement for rows that bind the columns at `present`; `None` when a
    /// column has no array type.
    pub fn unnest_sql(&self, present: &[usize]) -> Option<String> {
        let names: Vec<String> = present
            .iter()
            .map(|&i| self.dialect.quote(&self.columns[i].name))
            .collect();
        let types: Vec<&str> = present
            .iter()
            .map(|&i| self.columns[i].array_type.as_deref())
            .collect::<Option<_>>()?;
        let mut sql = super::postgres::unnest_sql(&self.table, &names, &types);
        sql.push_str(&self.conflict_clause(present));
        Some(sql)
    }

    fn uses_merge(&self) -> bool {
        self.dialect == Dialect::Generic && self.on_conflict != OnConflict::Error
    }

    /// The statement inserting `rows` rows that bind the columns at `present`.
    pub fn insert_sql(&self, present: &[usize], rows: usize) -> String {
        let d = self.dialect;
        let names: Vec<String> = present
            .iter()
            .map(|&i| d.quote(&self.columns[i].name))
            .collect();
        if self.uses_merge() {
            return self.merge_sql(present, &names);
        }
        let placeholders = format!("({})", vec!["?"; present.len()].join(","));
        let mut sql = String::with_capacity(64 + rows * (placeholders.len() + 1));
        sql.push_str("INSERT INTO ");
        sql.push_str(&self.table);
        if present.is_empty() {
            sql.push_str(" DEFAULT VALUES");
        } else {
            sql.push_str(&format!(" ({}) VALUES ", names.join(",")));
            for i in 0..rows {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&placeholders);
            }
        }
        sql.push_str(&self.conflict_clause(present));
        sql
    }

    fn conflict_clause(&self, present: &[usize]) -> String {
        let d = self.dialect;
        let q = |i: usize| d.quote(&self.columns[i].name);
        let updates: Vec<usize> = present
            .iter()
            .copied()
            .filter(|i| !self.key.contains(i))
            .collect();
        match (self.on_conflict, d) {
            (OnConflict::Error, _) | (_, Dialect::Generic) => String::new(),
            (OnConflict::Ignore, Dialect::Postgres | Dialect::Sqlite) => {
                format!(" ON CONFLICT ({}) DO NOTHING", self.key_list())
            }
            (OnConflict::Update, Dialect::Postgres | Dialect::Sqlite) if !updates.is_empty() => {
                let set: Vec<String> = updates
                    .iter()
                    .map(|&i| format!("{0}=EXCLUDED.{0}", q(i)))
                    .collect();
                format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    self.key_list(),
                    set.join(",")
                )
            }
            (OnConflict::Update, Dialect::Postgres | Dialect::Sqlite) => {
                format!(" ON CONFLICT ({}) DO NOTHING", self.key_list())
            }
            // A no-op update, not INSERT IGNORE: IGNORE would also swallow data errors.
            (OnConflict::Ignore, Dialect::MySql) => {
                format!(" ON DUPLICATE KEY UPDATE {0}={0}", q(self.key[0]))
            }
            (OnConflict::Update, Dialect::MySql) if !updates.is_empty() => {
                let set: Vec<String> = updates
                    .iter()
                    .map(|&i| format!("{0}=VALUES({0})", q(i)))
                    .collect();
                format!(" ON DUPLICATE KEY UPDATE {}", set.join(","))
            }
            (OnConflict::Update, Dialect::MySql) => {
                format!(" ON DUPLICATE KEY UPDATE {0}={0}", q(self.key[0]))
            }
        }
    }

    fn key_list(&self) -> String {
        self.key
            .iter()
            .map(|&i| self.dialect.quote(&self.columns[i].name))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Standard SQL `MERGE`, one row at a time, for databases without a known upsert. Each
    /// `?` stands where the table's own column gives it a type (a comparison with a key
    /// column, an assignment to a column): a parameter in a `SELECT` list has none, and some
    /// databases then take it as text. See [`TablePlan::bound_columns`] for their order.
    fn merge_sql(&self, present: &[usize], names: &[String]) -> String {
        let q = |i: usize| self.dialect.quote(&self.columns[i].name);
        let on: Vec<String> = self
            .key
            .iter()
            .map(|&i| format!("t.{} = ?", q(i)))
            .collect();
        let mut sql = format!(
            "MERGE INTO {} t USING (VALUES (1)) AS s (one) ON ({})",
            self.table,
            on.join(" AND ")
        );
        let updates: Vec<String> = self
            .merge_updates(present)
            .into_iter()
            .map(|i| format!("{} = ?", q(i)))
            .collect();
        if !updates.is_empty() {
            sql.push_str(&format!(
                " WHEN MATCHED THEN UPDATE SET {}",
                updates.join(", ")
            ));
        }
        sql.push_str(&format!(
            " WHEN NOT MATCHED THEN INSERT ({}) VALUES ({})",
            names.join(", "),
            vec!["?"; names.len()].join(", ")
        ));
        sql
    }

    /// The columns a `MERGE … WHEN MATCHED` overwrites: every bound one but the key, for
    /// `update`; none for `ignore`.
    fn merge_updates(&self, present: &[usize]) -> Vec<usize> {
        match self.on_conflict {
            OnConflict::Update => present
                .iter()
                .copied()
                .filter(|i| !self.key.contains(i))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The column behind each `?` of one row's statement, in order: the bound columns,
    /// or for a `MERGE` the key, the updated columns and then the bound columns.
    pub fn bound_columns(&self, present: &[usize]) -> Vec<usize> {
        if !self.uses_merge() {
            return present.to_vec();
        }
        let mut columns = self.key.clone();
        columns.extend(self.merge_updates(present));
        columns.extend_from_slice(present);
        columns
    }

    /// Parameters for `rows`, row after row, for the columns at `present`. PostgreSQL
    /// gets every value as untyped text (see [`super::postgres`] for why).
    pub fn parameters<'a>(
        &self,
        rows: &[&'a Row],
        present: &[usize],
    ) -> Vec<Box<dyn InputParameter + 'a>> {
        let bound = self.bound_columns(present);
        let mut params: Vec<Box<dyn InputParameter + 'a>> =
            Vec::with_capacity(rows.len() * bound.len());
        for row in rows {
            for &i in &bound {
                params.push(match self.dialect {
                    Dialect::Postgres => postgres_parameter(row[i].as_ref()),
                    Dialect::Sqlite => sqlite_parameter(row[i].as_ref(), self.columns[i].kind),
                    _ => parameter(row[i].as_ref(), self.columns[i].kind),
                });
            }
        }
        params
    }
}

/// Which columns a row binds: those whose source produced something.
pub fn presence(row: &Row) -> Vec<usize> {
    row.iter()
        .enumerate()
        .filter_map(|(i, v)| v.is_some().then_some(i))
        .collect()
}

/// Rows grouped by the columns they bind, in order of first appearance, so that each group
/// is one statement shape.
pub fn group_by_presence<'a>(
    rows: impl IntoIterator<Item = &'a Row>,
) -> Vec<(Vec<usize>, Vec<usize>)> {
    let mut groups: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
    for (index, row) in rows.into_iter().enumerate() {
        let present = presence(row);
        match groups.iter_mut().find(|(p, _)| *p == present) {
            Some((_, members)) => members.push(index),
            None => groups.push((present, vec![index])),
        }
    }
    groups
}

fn postgres_parameter(value: Option<&Value>) -> Box<dyn InputParameter + '_> {
    let mut text = String::new();
    match value {
        // Borrowed: a long text is not copied again for the driver.
        Some(Value::Text(s)) => Box::new(s.as_str().into_parameter()),
        Some(v) if super::postgres::text(v, &mut text) => Box::new(VarCharBox::from_string(text)),
        _ => Box::new(VarCharBox::null()),
    }
}

/// SQLite keeps timestamps as text, and its driver writes a bound timestamp to the
/// millisecond only: the text carries every microsecond, in the form SQLite's own date
/// functions read (`YYYY-MM-DD HH:MM:SS[.f]`, only the fractional digits needed).
fn sqlite_parameter(value: Option<&Value>, kind: SqlKind) -> Box<dyn InputParameter + '_> {
    match value {
        Some(Value::Timestamp(t)) => Box::new(VarCharBox::from_string(format!(
            "{}{}",
            t.format("%Y-%m-%d %H:%M:%S"),
            crate::cell::fraction(chrono::Timelike::nanosecond(t))
        ))),
        other => parameter(other, kind),
    }
}

/// Text and bytes are borrowed from the row, not copied. A NULL keeps the column's type so
/// that typed drivers do not reject it.
fn parameter(value: Option<&Value>, kind: SqlKind) -> Box<dyn InputParameter + '_> {
    match value {
        Some(Value::Int(i)) => Box::new(*i),
        Some(Value::Float(f)) => Box::new(*f),
        Some(Value::Bool(b)) => Box::new(Bit::from_bool(*b)),
        Some(Value::Text(s)) => Box::new(s.as_str().into_parameter()),
        Some(Value::Bytes(b)) => Box::new(b.as_slice().into_parameter()),
        Some(Value::Date(d)) => Box::new(date(d)),
        Some(Value::Timestamp(t)) => Box::new(typed_timestamp(timestamp(t))),
        Some(Value::Null) | None => match kind {
            SqlKind::Integer => Box::new(Nullable::<i64>::null()),
            SqlKind::Float => Box::new(Nullable::<f64>::null()),
            SqlKind::Bool => Box::new(Nullable::<Bit>::null()),
            SqlKind::Date => Box::new(Nullable::<Date>::null()),
            SqlKind::Timestamp => Box::new(WithDataType {
                value: Nullable::<Timestamp>::null(),
                data_type: TIMESTAMP_TYPE,
            }),
            SqlKind::Binary => Box::new(VarBinaryBox::null()),
            SqlKind::Decimal | SqlKind::Text | SqlKind::Time => Box::new(VarCharBox::null()),
        },
    }
}

/// Microsecond precision: the finest PostgreSQL, MariaDB and SQLite keep.
const TIMESTAMP_TYPE: DataType = DataType::Timestamp { precision: 6 };

fn typed_timestamp(t: Timestamp) -> WithDataType<Timestamp> {
    WithDataType {
        value: t,
        data_type: TIMESTAMP_TYPE,
    }
}

pub fn date(d: &chrono::NaiveDate) -> Date {
    use chrono::Datelike;
    Date {
        year: d.year() as i16,
        month: d.month() as u16,
        day: d.day() as u16,
    }
}

pub fn timestamp(t: &chrono::NaiveDateTime) -> Timestamp {
    use chrono::{Datelike, Timelike};
    Timestamp {
        year: t.year() as i16,
        month: t.month() as u16,
        day: t.day() as u16,
        hour: t.hour() as u16,
        minute: t.minute() as u16,
        second: t.second() as u16,
        fraction: t.nanosecond() / 1000 * 1000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dialect: Dialect, on_conflict: OnConflict) -> TablePlan {
        let col = |name: &str| CatalogColumn {
            name: name.into(),
            type_name: "int".into(),
            kind: SqlKind::Integer,
            has_default: false,
            array_type: Some("integer".into()),
            scale: None,
        };
        TablePlan {
            dialect,
            table: dialect.quote_table("t"),
            columns: vec![col("id"), col("v")],
            on_conflict,
            key: vec![0],
            max_rows: 500,
        }
    }

    #[test]
    fn multi_row_values() {
        let p = plan(Dialect::Postgres, OnConflict::Error);
        assert_eq!(
            p.insert_sql(&[0, 1], 2),
            "INSERT INTO \"t\" (\"id\",\"v\") VALUES (?,?),(?,?)"
        );
        assert_eq!(p.insert_sql(&[], 1), "INSERT INTO \"t\" DEFAULT VALUES");
    }

    #[test]
    fn unnest_statements_carry_the_conflict_rule() {
        let p = plan(Dialect::Postgres, OnConflict::Ignore);
        assert_eq!(
            p.unnest_sql(&[0, 1]).unwrap(),
            "INSERT INTO \"t\" (\"id\",\"v\") SELECT * FROM unnest(?::integer[],?::integer[]) ON CONFLICT (\"id\") DO NOTHING"
        );
    }

    #[test]
    fn upserts_per_dialect() {
        assert!(
            plan(Dialect::Postgres, OnConflict::Ignore)
                .insert_sql(&[0, 1], 1)
                .ends_with("ON CONFLICT (\"id\") DO NOTHING")
        );
        assert!(
            plan(Dialect::Sqlite, OnConflict::Update)
                .insert_sql(&[0, 1], 1)
                .ends_with("ON CONFLICT (\"id\") DO UPDATE SET \"v\"=EXCLUDED.\"v\"")
        );
        assert!(
            plan(Dialect::MySql, OnConflict::Ignore)
                .insert_sql(&[0, 1], 1)
                .ends_with("ON DUPLICATE KEY UPDATE `id`=`id`")
        );
        assert!(
            plan(Dialect::MySql, OnConflict::Update)
                .insert_sql(&[0, 1], 1)
                .ends_with("ON DUPLICATE KEY UPDATE `v`=VALUES(`v`)")
        );
        let update = plan(Dialect::Generic, OnConflict::Update);
        assert_eq!(
            update.insert_sql(&[0, 1], 1),
            "MERGE INTO \"t\" t USING (VALUES (1)) AS s (one) ON (t.\"id\" = ?) \
             WHEN MATCHED THEN UPDATE SET \"v\" = ? \
             WHEN NOT MATCHED THEN INSERT (\"id\", \"v\") VALUES (?, ?)"
        );
        assert_eq!(update.bound_columns(&[0, 1]), vec![0, 1, 0, 1]);
        let ignore = plan(Dialect::Generic, OnConflict::Ignore);
        assert!(!ignore.insert_sql(&[0, 1], 1).contains("WHEN MATCHED"));
        assert_eq!(ignore.bound_columns(&[0, 1]), vec![0, 0, 1]);
    }

    #[test]
    fn chunks_respect_the_parameter_limit() {
        let mut p = plan(Dialect::Generic, OnConflict::Error);
        p.max_rows = 5000;
        assert_eq!(p.rows_per_statement(&[0, 1]), 1000);
        let mut pg = plan(Dialect::Postgres, OnConflict::Error);
        pg.max_rows = 50_000;
        assert_eq!(pg.strategy(&[0, 1]), Strategy::Unnest);
        assert_eq!(pg.rows_per_statement(&[0, 1]), 50_000);
        // An array-typed column cannot be unnested: multi-row VALUES, within the limit.
        pg.columns[1].array_type = None;
        assert_eq!(pg.strategy(&[0, 1]), Strategy::MultiRowValues);
        assert_eq!(pg.rows_per_statement(&[0, 1]), 32_767);
        assert_eq!(
            plan(Dialect::Generic, OnConflict::Ignore).rows_per_statement(&[0, 1]),
            1
        );
    }

    #[test]
    fn rows_group_by_bound_columns() {
        let rows: Vec<Row> = vec![
            vec![Some(Value::Int(1)), None],
            vec![Some(Value::Int(2)), Some(Value::Null)],
            vec![Some(Value::Int(3)), None],
        ];
        assert_eq!(
            group_by_presence(&rows),
            vec![(vec![0], vec![0, 2]), (vec![0, 1], vec![1])]
        );
    }
}
