//! A message as it travels from a broker source through a route.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

/// One received message and the handle that acknowledges it.
#[derive(Debug)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub received_at: DateTime<Utc>,
    pub broker: Arc<str>,
    pub ack: AckHandle,
}

/// Tells the source that a route is finished with a message: its row is committed or its
/// dead letter stored. The source acknowledges to the broker in receive order.
#[derive(Debug)]
pub struct AckHandle {
    seq: u64,
    done: mpsc::Sender<u64>,
}

impl AckHandle {
    pub fn new(seq: u64, done: mpsc::Sender<u64>) -> Self {
        AckHandle { seq, done }
    }

    pub async fn complete(self) {
        // A closed channel means the source is gone; the broker will redeliver instead.
        let _ = self.done.send(self.seq).await;
    }
}
