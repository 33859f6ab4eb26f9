//! Broker connections: sources that deliver messages to routes and acknowledge them once
//! the routes are done (`mqtt`, `amqp_source`, in the order kept by `sequence`), and
//! publishers that count a message only once the broker confirms it (`publisher`, over
//! `mqtt_publish` (over `mqtt_publish_link` for 3.1.1 and 5) and `amqp_publish`, which
//! share the types in `publish`). Each connects with its resolved settings
//! (`mqtt_settings`; `amqp` holds what both AMQP sides share); `budget` bounds the bytes a
//! broker's messages hold in flight.

pub mod amqp;
pub mod amqp_publish;
pub mod amqp_source;
pub mod budget;
pub mod mqtt;
pub mod mqtt_link;
pub mod mqtt_publish;
pub mod mqtt_publish_link;
pub mod mqtt_settings;
pub mod publish;
pub mod publisher;
pub mod reach;
pub mod sequence;
