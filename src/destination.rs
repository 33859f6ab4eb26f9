//! Where messages go: an outbound route's rows and the dead-letter mirror's copies share one
//! destination, resolved once from the configuration's `config::Destination`.

use crate::broker::publish::Address;
use crate::config::{self, Qos};
use crate::template::{Template, check_topic, check_topic_value};

/// A broker and the address on it, with the publish options.
#[derive(Debug, Clone)]
pub struct Destination {
    pub broker: String,
    pub target: Target,
    pub qos: Qos,
    pub retain: bool,
}

impl Destination {
    /// Parses the templates of a validated block; `values_add_levels` says whether a `/` in
    /// a value placed into an MQTT topic may add levels.
    pub fn resolve(d: &config::Destination, values_add_levels: bool) -> Result<Self, String> {
        let template = |t: &Option<serde_saphyr::Spanned<config::EnvString>>| {
            Template::parse(t.as_ref().map(|t| t.value.as_str()).unwrap_or(""))
        };
        let target = match &d.topic {
            Some(_) => Target::Mqtt {
                topic: template(&d.topic)?,
                values_add_levels,
            },
            None => Target::Amqp {
                exchange: template(&d.exchange)?,
                routing_key: template(&d.routing_key)?,
            },
        };
        Ok(Destination {
            broker: d.broker.value.to_string(),
            target,
            qos: d.qos,
            retain: d.retain,
        })
    }
}

/// An MQTT topic, or an AMQP exchange and routing key, each a template.
#[derive(Debug, Clone)]
pub enum Target {
    Mqtt {
        topic: Template,
        /// Whether a `/` in a value may add topic levels.
        values_add_levels: bool,
    },
    Amqp {
        exchange: Template,
        routing_key: Template,
    },
}

impl Target {
    /// The address with each `{name}` filled by `value`, or why there is none.
    pub fn address(&self, value: impl Fn(&str) -> Option<String>) -> Result<Address, String> {
        match self {
            Target::Mqtt {
                topic,
                values_add_levels,
            } => {
                let mut bad = None;
                let topic = topic.render(|name| {
                    let v = value(name)?;
                    if bad.is_none()
                        && let Err(e) = check_topic_value(name, &v, *values_add_levels)
                    {
                        bad = Some(e);
                    }
                    Some(v)
                })?;
                if let Some(e) = bad {
                    return Err(e);
                }
                check_topic(&topic)?;
                Ok(Address {
                    topic,
                    exchange: String::new(),
                })
            }
            Target::Amqp {
                exchange,
                routing_key,
            } => {
                let exchange = exchange.render(&value)?;
                let routing_key = routing_key.render(&value)?;
                if routing_key.len() > 255 || exchange.len() > 255 {
                    return Err("the exchange or routing key is longer than 255 bytes".into());
                }
                Ok(Address {
                    topic: routing_key,
                    exchange,
                })
            }
        }
    }

    /// As configured: the topic template, or `exchange/routing_key` as
    /// [`Address::describe`] writes an address.
    pub fn describe(&self) -> String {
        match self {
            Target::Mqtt { topic, .. } => topic.text(),
            Target::Amqp {
                exchange,
                routing_key,
            } => Address {
                exchange: exchange.text(),
                topic: routing_key.text(),
            }
            .describe(),
        }
    }

    /// The names the templates read.
    pub fn columns(&self) -> Vec<&str> {
        match self {
            Target::Mqtt { topic, .. } => topic.columns().collect(),
            Target::Amqp {
                exchange,
                routing_key,
            } => exchange.columns().chain(routing_key.columns()).collect(),
        }
    }

    pub fn is_amqp(&self) -> bool {
        matches!(self, Target::Amqp { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mqtt(topic: &str, values_add_levels: bool) -> Target {
        Target::Mqtt {
            topic: Template::parse(topic).unwrap(),
            values_add_levels,
        }
    }

    #[test]
    fn a_slash_in_a_value_adds_levels_only_when_asked() {
        let value = |_: &str| Some("a/b".to_string());
        assert!(mqtt("x/{v}", false).address(value).is_err());
        assert_eq!(mqtt("x/{v}", true).address(value).unwrap().topic, "x/a/b");
        let wildcard = |_: &str| Some("+".to_string());
        assert!(mqtt("x/{v}", true).address(wildcard).is_err());
    }

    #[test]
    fn amqp_names_past_255_bytes_have_no_address() {
        let target = Target::Amqp {
            exchange: Template::parse("ex").unwrap(),
            routing_key: Template::parse("k.{v}").unwrap(),
        };
        let short = target.address(|_| Some("1".into())).unwrap();
        assert_eq!(
            (short.exchange.as_str(), short.topic.as_str()),
            ("ex", "k.1")
        );
        assert!(target.address(|_| Some("x".repeat(254))).is_err());
        assert_eq!(target.describe(), "ex/k.{v}");
        assert!(target.is_amqp() && !mqtt("t", false).is_amqp());
    }
}
