//! An MQTT 5 subscriber that records each message with its properties, on its own event
//! loop thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use super::{LIVENESS, unique, wait_until};

/// A message a [`Subscriber5`] received, with the properties a publisher sets.
#[derive(Clone, Debug)]
pub struct Received5 {
    pub topic: String,
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
    pub payload_format_indicator: Option<u8>,
    pub user_properties: Vec<(String, String)>,
}

impl Received5 {
    /// The value of user property `name`, if it was sent once.
    pub fn user_property(&self, name: &str) -> Option<&str> {
        let mut values = self.user_properties.iter().filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.as_str());
        assert!(values.next().is_none(), "{name} sent twice: {self:?}");
        first
    }
}

#[derive(Default)]
struct Seen {
    subscribed: bool,
    messages: Vec<Received5>,
}

/// A clean-start MQTT 5 subscriber of one filter at QoS 1.
pub struct Subscriber5 {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
}

impl Subscriber5 {
    /// Returns once the broker granted the subscription (a liveness deadline).
    pub fn connect(port: u16, filter: &str) -> Subscriber5 {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, halt, filter) = (seen.clone(), stop.clone(), filter.to_owned());
        std::thread::spawn(move || {
            let rt = super::runtime();
            rt.block_on(async move {
                let options = MqttOptions::new(unique("sub5"), "127.0.0.1", port);
                let (client, mut eventloop) = AsyncClient::new(options, 100);
                client
                    .subscribe(filter, QoS::AtLeastOnce)
                    .await
                    .expect("queue SUBSCRIBE");
                while !halt.load(Ordering::SeqCst) {
                    let event =
                        tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
                    match event {
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            s.lock().unwrap().subscribed = true
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            let props = p.properties.unwrap_or_default();
                            s.lock().unwrap().messages.push(Received5 {
                                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                                payload: p.payload.to_vec(),
                                content_type: props.content_type,
                                payload_format_indicator: props.payload_format_indicator,
                                user_properties: props.user_properties,
                            });
                        }
                        Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
                        _ => {}
                    }
                }
                let _ = client.try_disconnect();
            });
        });
        wait_until("the MQTT 5 SUBACK", LIVENESS, || {
            seen.lock().unwrap().subscribed
        });
        Subscriber5 { seen, stop }
    }

    pub fn messages(&self) -> Vec<Received5> {
        self.seen.lock().unwrap().messages.clone()
    }
}

impl Drop for Subscriber5 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
