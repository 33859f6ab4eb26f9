//! The demo's embedded MQTT broker, and the client that publishes readings and hears alerts.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot};

pub fn start_broker() -> Result<SocketAddr, String> {
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?;
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: 1 << 20,
        max_inflight_count: 1000,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "demo".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 1000,
            max_segment_size: 10 << 20,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([("demo".to_string(), server)])),
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                eprintln!("demo: the embedded broker stopped: {e}");
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(addr)
}

/// The demo's own MQTT client: publishes the readings and hears the alerts.
pub struct Watcher {
    pub client: AsyncClient,
    pub alerts: mpsc::Receiver<(String, String)>,
}

impl Watcher {
    pub async fn connect(broker: SocketAddr, wait: Duration) -> Result<Watcher, String> {
        let mut options =
            MqttOptions::new("mqdb-demo-watcher", broker.ip().to_string(), broker.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 100);
        let (alerts_tx, alerts) = mpsc::channel(100);
        let (subscribed_tx, subscribed) = oneshot::channel();
        client
            .subscribe("alerts/#", QoS::AtLeastOnce)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let payload = String::from_utf8_lossy(&p.payload).into_owned();
                        if alerts_tx.send((p.topic, payload)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(wait, subscribed)
            .await
            .map_err(|_| "no SUBACK from the embedded broker".to_string())?
            .map_err(|_| "the MQTT client stopped".to_string())?;
        Ok(Watcher { client, alerts })
    }
}
