//! mqdb: a bidirectional bridge between message brokers (MQTT, AMQP) and relational
//! databases reached through ODBC.
//!
//! A route is a pipe: source → decode → map → batch → sink → acknowledge, with the
//! dead-letter store beside the sink.
//!
//! # Layout
//!
//! Modules sit in layers and import only from their own layer or the ones below, never
//! in a circle (`layering.rs` checks both on every `cargo test`). Bottom to top:
//!
//! 1. Values a message or row carries, and what everything shares:
//!    - [`error`]: error types, the one classification of data errors versus outages,
//!      and the exit codes of commands ([`error::AppError`]).
//!    - [`backoff`]: the one retry delay of every reconnect and retry loop.
//!    - [`heap`]: memory given back to the system after large messages.
//!    - [`metrics`]: per-route counters and connection state.
//!    - [`convert`]: payload values → the SQL type of each column.
//!    - [`cell`]: one value read by an outbound query, and its one text in every payload.
//!    - [`message`]: a received message (MQTT or AMQP) and its acknowledgement handle.
//!    - [`dlq`]: dead letters and how operators see them.
//! 2. Codecs and mapping, on the values:
//!    - [`codec`]: payloads: JSON, and delimited text read record by record; rows → messages.
//!    - [`mapping`]: column sources (`topic.x`, `payload.a.b`, `payload.2`, `header.x`,
//!      `meta.x`) → rows, one per JSON message or CSV record.
//!    - [`topic`]: MQTT topic filters with `{name}` captures.
//!    - [`template`]: outbound topic, exchange and routing-key templates.
//! 3. [`config`]: the YAML model (plain data), `${VAR}` substitution, and validation with
//!    file:line errors, which parses filters, templates and CSV formats with layer 2.
//! 4. Adapters, side by side — none imports another:
//!    - [`db`]: ODBC: the sink thread (`worker`, `write`, `insert`, `bulk`, `postgres`),
//!      the poller (`poll`) with how each result column is read (`shape`) and its buffers
//!      (`fetch`), the catalog, dialects, and the `check` probe.
//!    - [`broker`]: sources (`mqtt` over `mqtt_link` for 3.1.1 and 5, `amqp_source`) that
//!      acknowledge in receive order (`sequence`); confirming publishers (`publisher` over
//!      `mqtt_publish` and `amqp_publish`, sharing the types in `publish`); each connects
//!      with its resolved settings (`mqtt_settings`, `amqp`).
//!    - [`state`]: the sqlx state store (`migrations/`): dead letters and positions.
//! 5. Routes, composing the adapters:
//!    - [`routes`]: configuration routes resolved into filters, sink targets and mappers.
//!    - [`inbound`]: the inbound route loop: batching, dead letters, acknowledgements.
//!    - [`destination`]: where an outbound route's rows and the dead-letter mirror's copies
//!      go (a broker, a topic or an exchange and routing key, qos, retain).
//!    - [`outbound`]: the outbound route loop: poll, publish, confirm, store the position;
//!      [`dedup`]: each published message's deduplication key and content type.
//!    - [`replay`]: dead letters through their routes again.
//!    - [`mirror`]: new dead letters copied to a broker (`dead_letter.publish`).
//! 6. Application:
//!    - [`app`]: the commands `run` and `check`.
//!    - [`cli`]: the command line (clap); [`logging`]: text or JSON log lines.
//!    - [`dlq_commands`]: `dlq list`, `show`, `replay`, `purge`.
//!    - [`http`]: `/health`, `/metrics` and the periodic log summary.
//!    - [`demo`]: `mqdb demo`, a guided run on an embedded broker and SQLite.
//!
//! # A message inbound
//!
//! 1. source: `broker/mqtt.rs` (over `broker/mqtt_link.rs`) or `broker/amqp_source.rs`
//!    receive it into a [`message::Message`], holding its bytes against `broker/budget.rs`;
//! 2. decode: `codec/json.rs` or `codec/csv.rs`;
//! 3. map: `mapping.rs` builds the row, `convert.rs` converts each value to its column;
//! 4. batch: `inbound.rs` gathers rows and dead-letters what did not map (`state.rs`);
//! 5. write: `db/worker.rs` runs the transaction, `db/write.rs` with the statement of
//!    `db/insert.rs` (or `db/bulk.rs`, `db/postgres.rs`), isolating rejected rows;
//! 6. ack: `inbound.rs` marks the messages done and `broker/sequence.rs` releases their
//!    acknowledgements in receive order.
//!
//! # A row outbound
//!
//! 1. poll: `db/poll.rs` runs the query past the stored position, reading values as
//!    `cell.rs` cells (`db/shape.rs`, `db/fetch.rs`);
//! 2. encode: `codec/json.rs` or `codec/csv.rs`, with `dedup.rs` naming the message and its
//!    content type and `template.rs` its topic or routing key;
//! 3. publish: `broker/publisher.rs` over `broker/mqtt_publish.rs` or
//!    `broker/amqp_publish.rs`;
//! 4. confirm: `outbound.rs` awaits each broker answer (`broker/publish.rs`), dead-lettering
//!    rejected rows;
//! 5. position: `outbound.rs` stores the position past the confirmed rows in `state.rs`.

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
pub mod destination;
pub mod dlq;
pub mod dlq_commands;
pub mod error;
pub mod heap;
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
