//! mqdb: a bidirectional bridge between message brokers (MQTT, AMQP) and relational
//! databases reached through ODBC.
//!
//! A route is a pipe: source → decode → map → batch → sink → acknowledge, with the
//! dead-letter store beside the sink.
//!
//! # Layout
//!
//! - [`cli`]: the command line (clap).
//! - [`app`]: the commands `run` and `check`, and the exit codes of all commands.
//! - [`config`]: the YAML model, `${VAR}` substitution, validation with file:line errors.
//! - [`routes`]: configuration routes resolved into filters, sink targets and mappers.
//! - [`topic`]: MQTT topic filters with `{name}` captures.
//! - [`message`]: a received message (MQTT or AMQP) and its acknowledgement handle.
//! - [`codec`]: payloads: JSON, and delimited text read record by record; rows → messages.
//! - [`mapping`]: column sources (`topic.x`, `payload.a.b`, `payload.2`, `header.x`,
//!   `meta.x`) → rows, one per JSON message or CSV record.
//! - [`convert`]: payload values → the SQL type of each column.
//! - [`broker`]: sources (`mqtt` over `mqtt_link` for 3.1.1 and 5, `amqp_source`) that
//!   acknowledge in receive order (`sequence`), and confirming publishers.
//! - [`template`]: outbound topic, exchange and routing-key templates.
//! - [`db`]: ODBC: the sink thread (`worker`), the poller (`poll`) with how each result
//!   column is read (`shape`), its buffers and values (`fetch`) and the published text of
//!   each value (`cell`), the catalog, insert statements per dialect, and the `check` probe.
//! - [`inbound`]: the inbound route loop: batching, dead letters, acknowledgements.
//! - [`outbound`]: the outbound route loop: poll, publish, confirm, store the position;
//!   [`dedup`]: each published message's deduplication key and content type.
//! - [`dlq`]: dead letters and how operators see them; [`dlq_commands`]: `dlq list`,
//!   `show`, `replay`, `purge`; [`replay`]: dead letters through their routes again;
//!   [`mirror`]: new dead letters copied to a broker (`dead_letter.publish`).
//! - [`metrics`]: per-route counters and connection state; [`http`]: `/health`,
//!   `/metrics` and the periodic log summary.
//! - [`demo`]: `mqdb demo`, a guided run on an embedded broker and SQLite.
//! - [`state`]: the sqlx state store (`migrations/`).
//! - [`error`]: error types and the one classification of data errors versus outages.
//! - [`logging`]: text or JSON log lines.
//! - [`backoff`]: the one retry delay of every reconnect and retry loop.

pub mod app;
pub mod backoff;
pub mod broker;
pub mod cell;
pub mod cli;
pub mod codec;
pub mod config;
pub mod convert;
pub mod db;
pub mod dedup;
pub mod demo;
pub mod dlq;
pub mod dlq_commands;
pub mod error;
pub mod http;
pub mod inbound;
pub mod logging;
pub mod mapping;
pub mod message;
pub mod metrics;
pub mod mirror;
pub mod outbound;
pub mod replay;
pub mod routes;
pub mod state;
pub mod template;
pub mod topic;

#[cfg(test)]
mod layering;
