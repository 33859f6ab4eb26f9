//! mqdb: a bidirectional bridge between message brokers (MQTT, AMQP) and relational
//! databases reached through ODBC.
//!
//! A route is a pipe: source → decode → map → batch → sink → acknowledge, with the
//! dead-letter store beside the sink.
//!
//! # Layout
//!
//! - [`cli`]: the command line (clap).
//! - [`app`]: the commands `run`, `check` and `dlq …`, and their exit codes.
//! - [`config`]: the YAML model, `${VAR}` substitution, validation with file:line errors.
//! - [`routes`]: configuration routes resolved into filters, sink targets and mappers.
//! - [`topic`]: MQTT topic filters with `{name}` captures.
//! - [`message`]: a received message and its acknowledgement handle.
//! - [`mapping`]: column sources (`topic.x`, `payload.a.b`, `meta.x`) → rows.
//! - [`convert`]: payload values → the SQL type of each column.
//! - [`broker`]: broker sources (`mqtt`): connect, subscribe, acknowledge in order.
//! - [`db`]: ODBC: the sink thread (`worker`), the catalog, insert statements per dialect,
//!   and the `check` probe.
//! - [`inbound`]: the inbound route loop: batching, dead letters, acknowledgements.
//! - [`dlq`]: dead letters and how operators see them.
//! - [`state`]: the sqlx state store (`migrations/`).
//! - [`error`]: error types and the one classification of data errors versus outages.
//! - [`logging`]: text or JSON log lines.

pub mod app;
pub mod broker;
pub mod cli;
pub mod codec;
pub mod config;
pub mod convert;
pub mod db;
pub mod dlq;
pub mod error;
pub mod inbound;
pub mod logging;
pub mod mapping;
pub mod message;
pub mod outbound;
pub mod routes;
pub mod state;
pub mod template;
pub mod topic;
