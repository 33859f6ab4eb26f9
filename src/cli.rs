//! The command line (SPEC §2).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "mqdb",
    version,
    about = "A bridge between message brokers and relational databases"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        short,
        long,
        global = true,
        env = "MQDB_CONFIG",
        default_value = "mqdb.yaml"
    )]
    pub config: PathBuf,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every route until SIGINT/SIGTERM, then drain and exit.
    Run,
    /// Validate the file, connect to every broker and database, verify tables, columns and
    /// statements; one line per route.
    Check,
    /// Ask the running bridge's `/health` (at `http.listen`); exit 0 only if every route's
    /// broker and database are connected. For container health checks.
    Health,
    /// A guided tour on an embedded MQTT broker and a SQLite file: rows arriving, alerts
    /// published, a dead letter fixed and replayed. Needs no config file.
    Demo {
        /// Where the demo keeps its config, database and state (reset at each run).
        #[arg(long, default_value = "mqdb-demo")]
        dir: PathBuf,
    },
    /// What the state store says: instances seen, who holds each outbound route and the
    /// dead-letter mirror, outbound positions, dead letters per route and kind.
    Status {
        /// One JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Outbound routes' stored positions: list them, or set or reset one.
    Position {
        #[command(subcommand)]
        command: PositionCommand,
    },
    /// Inspect the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum PositionCommand {
    /// Each outbound route's stored position, when it last moved, and who holds the route.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Store a route's position: one value per `track` column, in order. The route
    /// publishes the rows after it.
    Set {
        route: String,
        #[arg(required = true, num_args = 1..)]
        values: Vec<String>,
        #[command(flatten)]
        change: PositionChange,
    },
    /// Store a route's `start` as its position: it publishes its rows again from there.
    Reset {
        route: String,
        #[command(flatten)]
        change: PositionChange,
    },
}

/// How a position change goes ahead.
#[derive(Debug, clap::Args)]
pub struct PositionChange {
    /// Also while a running instance holds the route: it is made to step down and read the
    /// new position when it takes the route again.
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// Which dead letters a command takes.
#[derive(Debug, clap::Args)]
pub struct Selection {
    /// Every dead letter (that the other filters let through).
    #[arg(long)]
    pub all: bool,
    /// These dead letters (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub id: Vec<i64>,
    /// This route's dead letters.
    #[arg(long)]
    pub route: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// One line (or one JSON object) per dead letter.
    List {
        /// Only this route's dead letters.
        #[arg(long)]
        route: Option<String>,
        /// Only dead letters that first failed at or after this time (RFC 3339, or a
        /// duration ago such as 2h or 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only this kind of error (decode, convert, rejected, topic, unroutable, …).
        #[arg(long)]
        error_kind: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Everything stored about one dead letter.
    Show {
        /// The dead letter's id (from `dlq list`).
        id: i64,
    },
    /// Send dead letters through their routes again, as configured now; each success is
    /// removed, each failure kept with one more attempt.
    Replay {
        #[command(flatten)]
        selection: Selection,
        /// Only this kind of error.
        #[arg(long)]
        error_kind: Option<String>,
        /// Map and insert inside a transaction that is rolled back (inbound), or resolve
        /// the destination (outbound); change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters for good.
    Purge {
        #[command(flatten)]
        selection: Selection,
        /// Those that first failed before this time (RFC 3339, or a duration ago).
        #[arg(long)]
        before: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}
