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
//!    - [`connection_string`]: ODBC connection-string attributes, and the PostgreSQL URL
//!      an outbound route's `wake` derives from one.
//!    - [`net`]: how a broker connection leaves the machine: which HTTP proxy it takes
//!      (the broker's `proxy:` or the environment's `HTTPS_PROXY`…), the CONNECT tunnel,
//!      the TLS client settings (trust, client certificate, server name, ALPN), and the
//!      credentials a URL may carry.
//! 2. Codecs and mapping, on the values:
//!    - [`codec`]: payloads: JSON, and delimited text read record by record; rows → messages.
//!    - [`mapping`]: column sources (`topic.x`, `payload.a.b`, `payload.2`, `header.x`,
//!      `meta.x`, `item.x`) → rows, one per JSON message, CSV record, or element of the
//!      array a route's `rows:` explodes (`mapping/explode.rs`).
//!    - [`topic`]: MQTT topic filters with `{name}` captures.
//!    - [`template`]: outbound topic, exchange and routing-key templates.
//! 3. [`config`]: the YAML model as plain data, one file per block (`values`, `broker`,
//!    `database`, `inbound`, `outbound` with the destination both outbound routes and the
//!    mirror use, `model` for the root), `${VAR}` substitution, and validation with
//!    file:line errors (`validate/`), which parses filters, templates and CSV formats with
//!    layer 2.
//! 4. Adapters, side by side — none imports another:
//!    - [`db`]: ODBC: the sink thread (`worker`, `write`, `insert`, `bulk`, `postgres`),
//!      the poller (`poll`) over the query's described shape and position binding
//!      (`describe`), how each result column is read (`shape`) and its buffers (`fetch`),
//!      the PostgreSQL transactions running around a poll (`running`),
//!      the catalog, dialects, and the `check` probe.
//!    - [`broker`]: sources (`mqtt` over `mqtt_link` for 3.1.1 and 5, `amqp_source`) that
//!      acknowledge in receive order (`sequence`); confirming publishers (`publisher` over
//!      `mqtt_publish` and `amqp_publish`, sharing the types in `publish`); each connects
//!      with its resolved settings (`mqtt_settings`, `amqp`), reached as `reach` says
//!      (TLS files, proxy).
//!    - [`state`]: the sqlx state store (`migrations/`): opening and writing (`store`),
//!      dead letters and replay claims (`dead_letters`), positions (`positions`), leases
//!      and the instances seen (`leases`).
//! 5. Routes, composing the adapters:
//!    - [`routes`]: configuration routes resolved into filters, sink targets and mappers.
//!    - [`inbound`]: the inbound route loop: batching, dead letters, acknowledgements.
//!    - [`destination`]: where an outbound route's rows and the dead-letter mirror's copies
//!      go (a broker, a topic or an exchange and routing key, qos, retain).
//!    - [`outbound`]: the outbound route loop: poll, publish, confirm, store the position,
//!      with what each row becomes in `outbound/row.rs`, how far `visibility: snapshot`
//!      lets it publish in `outbound/barrier.rs` and the PostgreSQL LISTEN that wakes it
//!      in `outbound/wake.rs`; [`dedup`]: each published
//!      message's deduplication key and content type.
//!    - [`replay`]: dead letters through their routes again: the claim loop (`mod.rs`),
//!      the routes it re-sends through (`engine`, `inbound`, `outbound`), each letter's
//!      outcome (`outcome`) and the summary (`report`).
//!    - [`mirror`]: new dead letters copied to a broker (`dead_letter.publish`).
//!    - [`slots`]: shared MQTT subscriptions over numbered client ids held through leases,
//!      and the adoption of a slot whose instance is gone.
//!    - [`lease`]: holding an outbound route's or the mirror's lease while it runs, so that
//!      one instance among those sharing the state store does the work.
//! 6. Application:
//!    - [`app`]: the commands `run` (`mod.rs`, building each route in `wiring.rs`) and
//!      `check` (`check.rs`).
//!    - [`cli`]: the command line (clap); [`logging`]: text or JSON log lines.
//!    - [`dlq_commands`]: `dlq list`, `show`, `replay`, `purge`; [`status`]: `mqdb status`;
//!      [`position_commands`]: `position list`, `set`, `reset`.
//!    - [`http`]: `/health`, `/metrics` and the periodic log summary.
//!    - [`demo`]: `mqdb demo`, a guided run on an embedded broker (`embedded_broker.rs`)
//!      and SQLite (`sqlite.rs`, `files.rs`).
//!
//! # A message inbound
//!
//! 1. source: `broker/mqtt.rs` (over `broker/mqtt_link.rs`) or `broker/amqp_source.rs`
//!    receive it into a [`message::Message`], holding its bytes against `broker/budget.rs`;
//! 2. decode: `codec/json.rs` or `codec/csv.rs`;
//! 3. map: `mapping/mod.rs` builds the row from the sources of `mapping/source.rs` (one
//!    per element with `rows:`, `mapping/explode.rs`), and `convert.rs` converts each
//!    value to its column;
//! 4. batch: `inbound.rs` gathers rows and dead-letters what did not map
//!    (`state/dead_letters.rs`);
//! 5. write: `db/worker.rs` runs the transaction, `db/write.rs` with the statement of
//!    `db/insert.rs` (or `db/bulk.rs`, `db/postgres.rs`), isolating rejected rows;
//! 6. ack: `inbound.rs` marks the messages done and `broker/sequence.rs` releases their
//!    acknowledgements in receive order.
//!
//! # A row outbound
//!
//! 1. poll: `db/poll.rs` runs the query past the stored position, reading values as
//!    `cell.rs` cells (`db/shape.rs`, `db/fetch.rs`);
//! 2. encode: `outbound/row.rs` with `codec/json.rs` or `codec/csv.rs`, `dedup.rs` naming
//!    the message and its content type, and `destination.rs` with `template.rs` its topic
//!    or exchange and routing key;
//! 3. publish: `broker/publisher.rs` over `broker/mqtt_publish.rs` or
//!    `broker/amqp_publish.rs`;
//! 4. confirm: `outbound/mod.rs` awaits each broker answer (`broker/publish.rs`),
//!    dead-lettering rejected rows;
//! 5. position: `outbound/mod.rs` stores the position past the confirmed rows
//!    (`state/positions.rs`).

pub mod app;
pub mod backoff;
pub mod broker;
pub mod cell;
pub mod cli;
pub mod codec;
pub mod config;
pub mod connection_string;
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
pub mod lease;
pub mod logging;
pub mod mapping;
pub mod message;
pub mod metrics;
pub mod mirror;
pub mod net;
pub mod outbound;
pub mod position_commands;
pub mod replay;
pub mod routes;
pub mod slots;
pub mod state;
pub mod status;
pub mod template;
pub mod topic;

#[cfg(test)]
mod layering;
