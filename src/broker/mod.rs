//! Broker connections: sources that deliver messages to routes and acknowledge them once
//! the routes are done.

pub mod mqtt;
