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
    /// Inspect the dead-letter queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// One line (or one JSON object) per dead letter.
    List {
        /// Only this route's dead letters.
        #[arg(long)]
        route: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Everything stored about one dead letter.
    Show {
        /// The dead letter's id (from `dlq list`).
        id: i64,
    },
}
