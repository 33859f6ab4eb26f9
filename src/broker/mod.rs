//! Broker connections: sources that deliver messages to routes and acknowledge them once
//! the routes are done (`mqtt`), and publishers that count a message only once the broker
//! confirms it (`publish`, over `mqtt_publish` and `amqp`).

pub mod amqp;
pub mod mqtt;
pub mod mqtt_publish;
pub mod publish;
