//! What differs between databases: identifier quoting, upsert syntax, session set-up and
//! the insert strategy.

use crate::config::DialectChoice;

/// The database family behind a connection, from `SQL_DBMS_NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    Sqlite,
    /// Any other ODBC database: standard SQL only.
    Generic,
}

impl Dialect {
    pub fn from_dbms_name(name: &str) -> Dialect {
        Dialect::from_choice(DialectChoice::from_name(name)).unwrap_or(Dialect::Generic)
    }

    /// The dialect a configuration forces; `None` for `auto`.
    pub fn from_choice(choice: DialectChoice) -> Option<Dialect> {
        match choice {
            DialectChoice::Auto => None,
            DialectChoice::Postgres => Some(Dialect::Postgres),
            DialectChoice::Mysql => Some(Dialect::MySql),
            DialectChoice::Sqlite => Some(Dialect::Sqlite),
            DialectChoice::Generic => Some(Dialect::Generic),
        }
    }

    /// Quotes one identifier, doubling the quote character inside it.
    pub fn quote(self, ident: &str) -> String {
        match self {
            Dialect::MySql => format!("`{}`", ident.replace('`', "``")),
            _ => format!("\"{}\"", ident.replace('"', "\"\"")),
        }
    }

    /// Quotes `table` or `schema.table`.
    pub fn quote_table(self, table: &str) -> String {
        table
            .split('.')
            .map(|part| self.quote(part))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// Most bound parameters one statement may carry.
    pub fn max_parameters(self) -> usize {
        match self {
            Dialect::Postgres | Dialect::MySql => 65_535,
            Dialect::Sqlite => 32_766,
            // SQL Server's limit is 2,100.
            Dialect::Generic => 2_000,
        }
    }

    /// Statements run once per connection so that timestamps are read and written as UTC.
    pub fn session_setup(self) -> &'static [&'static str] {
        match self {
            Dialect::Postgres => &["SET TIME ZONE 'UTC'"],
            Dialect::MySql => &["SET time_zone = '+00:00'"],
            // The SQL standard's own statement; not every database speaks it.
            Dialect::Generic => &["SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE"],
            Dialect::Sqlite => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_defeats_injection() {
        assert_eq!(
            Dialect::Postgres.quote("a\"; DROP TABLE x; --"),
            "\"a\"\"; DROP TABLE x; --\""
        );
        assert_eq!(Dialect::MySql.quote("a`b"), "`a``b`");
        assert_eq!(Dialect::Postgres.quote_table("s.t"), "\"s\".\"t\"");
    }

    #[test]
    fn a_configured_dialect_is_parsed_and_a_wrong_one_named_with_its_line() {
        let yaml =
            |d: &str| format!("databases:\n  d:\n    connection_string: x\n    dialect: {d}\n");
        let path = std::path::Path::new("c.yaml");
        let forced = |d: &str| {
            let config = crate::config::parse(path, &yaml(d)).expect("parses");
            Dialect::from_choice(config.databases["d"].value.dialect)
        };
        assert_eq!(forced("auto"), None);
        assert_eq!(forced("generic"), Some(Dialect::Generic));
        assert_eq!(forced("postgres"), Some(Dialect::Postgres));
        assert_eq!(forced("mysql"), Some(Dialect::MySql));
        assert_eq!(forced("sqlite"), Some(Dialect::Sqlite));
        let e = crate::config::parse(path, &yaml("oracle"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.yaml:4:"), "{e}");
        assert!(e.contains("generic"), "the valid values are named: {e}");
    }

    #[test]
    fn detection() {
        assert_eq!(Dialect::from_dbms_name("PostgreSQL"), Dialect::Postgres);
        assert_eq!(Dialect::from_dbms_name("MariaDB"), Dialect::MySql);
        assert_eq!(Dialect::from_dbms_name("MySQL"), Dialect::MySql);
        assert_eq!(Dialect::from_dbms_name("SQLite"), Dialect::Sqlite);
        assert_eq!(
            Dialect::from_dbms_name("Microsoft SQL Server"),
            Dialect::Generic
        );
    }
}
