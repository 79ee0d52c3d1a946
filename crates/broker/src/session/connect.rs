//! CONNECT validation: client identifier rules, keep-alive, session expiry, and the limits
//! both sides agree on, before the registry is touched.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use midge_proto::{
    ConnAck, ConnAckProperties, Connect, Packet, ProtocolVersion, ReasonCode, Will, topic,
};

use crate::config::MqttConfig;

/// What was agreed for this connection.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// Protocol version.
    pub protocol: ProtocolVersion,
    /// Client identifier, possibly assigned by the broker.
    pub client_id: Arc<str>,
    /// Whether the broker assigned the identifier (v5 tells the client).
    pub assigned_client_id: bool,
    /// Clean Start / Clean Session.
    pub clean_start: bool,
    /// Session expiry in seconds (`u32::MAX` never).
    pub expiry_interval: u32,
    /// Keep-alive in force, seconds; 0 is off.
    pub keep_alive: u16,
    /// Receive Maximum of the client: QoS 1/2 messages we may have in flight to it.
    pub client_receive_maximum: u16,
    /// Maximum Packet Size of the client.
    pub client_max_packet_size: u32,
    /// Topic aliases the client accepts from us.
    pub client_topic_alias_maximum: u16,
    /// v5 Request Response Information.
    pub request_response_information: bool,
    /// The will, if any.
    pub will: Option<Will>,
    /// User name from CONNECT.
    pub username: Option<String>,
    /// Properties for CONNACK that follow from the negotiation.
    pub connack: ConnAckProperties,
}

/// A refused CONNECT: the reason for CONNACK and a message for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// CONNACK reason (mapped to a v3 return code at the edge).
    pub reason: ReasonCode,
    /// For the log.
    pub message: &'static str,
}

fn refuse(reason: ReasonCode, message: &'static str) -> Refusal {
    Refusal { reason, message }
}

/// Validates CONNECT against the protocol and the configuration.
pub fn negotiate(connect: &Connect, config: &MqttConfig) -> Result<Negotiated, Refusal> {
    let v5 = connect.protocol.is_v5();
    let props = &connect.properties;
    let mut connack = ConnAckProperties::default();

    // Client identifier [MQTT-3.1.3-6] [MQTT-3.1.3-7] [MQTT-3.1.3-8].
    let (client_id, assigned) = if connect.client_id.is_empty() {
        match connect.protocol {
            ProtocolVersion::V31 => {
                return Err(refuse(
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    "MQTT 3.1 requires a client id",
                ));
            }
            ProtocolVersion::V311 if !connect.clean_start => {
                return Err(refuse(
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    "empty client id needs clean session = 1 in MQTT 3.1.1",
                ));
            }
            _ => (assign_client_id(), true),
        }
    } else {
        (connect.client_id.clone(), false)
    };
    if v5 && assigned {
        connack.assigned_client_identifier = Some(client_id.clone());
    }

    // An authentication method is the listener's to accept or refuse (0x8C): the
    // connection runs the exchange after this (see `auth::scram`).

    // Keep alive: v5 clients are told a lower value; v3 clients cannot be told. For a v5
    // client, 0 (no keep alive) is longer than any cap below 65535, as in Mosquitto.
    let mut keep_alive = connect.keep_alive;
    let uncapped_zero = keep_alive == 0 && config.max_keepalive < u16::MAX;
    if keep_alive > config.max_keepalive || (v5 && uncapped_zero) {
        if !v5 {
            return Err(refuse(
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                "keep alive above max_keepalive",
            ));
        }
        keep_alive = config.max_keepalive;
        // [MQTT-3.2.2-21] the client must use the Server Keep Alive.
        connack.server_keep_alive = Some(keep_alive);
    }

    // Session expiry: v3 clients cannot ask for one, so their persistent sessions get
    // `v3_session_expiry_secs` (0: never), or a device that never returns is kept forever.
    let requested = if v5 {
        props.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else if config.v3_session_expiry_secs == 0 {
        u32::MAX
    } else {
        config.v3_session_expiry_secs
    };
    let cap = config.max_session_expiry_secs;
    let expiry_interval = if cap > 0 && requested > cap {
        cap
    } else {
        requested
    };
    if v5 && expiry_interval != requested {
        connack.session_expiry_interval = Some(expiry_interval);
    }

    if let Some(will) = &connect.will {
        if will.retain && !config.retain_available {
            return Err(refuse(
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "will retain is not available",
            ));
        }
        if !within_topic_limits(&will.topic, config)
            || topic::validate_topic_name(&will.topic).is_err()
        {
            return Err(refuse(
                ReasonCode::TOPIC_NAME_INVALID,
                "will topic is not accepted",
            ));
        }
    }

    if v5 {
        if config.max_inflight < u16::MAX {
            connack.receive_maximum = Some(config.max_inflight);
        }
        connack.maximum_packet_size = Some(config.max_packet_size);
        if config.topic_alias_maximum > 0 {
            connack.topic_alias_maximum = Some(config.topic_alias_maximum);
        }
        if !config.retain_available {
            connack.retain_available = Some(false);
        }
        if props.request_response_information == Some(true) {
            connack.response_information = config.response_information.clone();
        }
        // An accepting CONNACK the client's Maximum Packet Size leaves no room for cannot
        // be sent [MQTT-3.1.2-25], and the client cannot be served without the limits it
        // carries: refused instead, in a CONNACK of 5 bytes.
        if let Some(max) = props.maximum_packet_size
            && !connack_fits(&connack, max)
        {
            return Err(refuse(
                ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                "CONNACK exceeds the client's maximum packet size",
            ));
        }
    }

    Ok(Negotiated {
        protocol: connect.protocol,
        client_id: Arc::from(client_id),
        assigned_client_id: assigned,
        clean_start: connect.clean_start,
        expiry_interval,
        keep_alive,
        client_receive_maximum: props.receive_maximum.unwrap_or(u16::MAX),
        client_max_packet_size: props.maximum_packet_size.unwrap_or(u32::MAX),
        client_topic_alias_maximum: props.topic_alias_maximum.unwrap_or(0),
        request_response_information: props.request_response_information.unwrap_or(false),
        will: connect.will.clone(),
        username: connect.username.clone(),
        connack,
    })
}

/// Whether an accepting CONNACK with `properties` fits in `max` bytes, without the reason
/// string and user properties the encoder leaves out when they do not fit.
fn connack_fits(properties: &ConnAckProperties, max: u32) -> bool {
    let connack = Packet::ConnAck(ConnAck {
        session_present: true,
        reason_code: ReasonCode::SUCCESS,
        properties: ConnAckProperties {
            reason_string: None,
            user_properties: Vec::new(),
            ..properties.clone()
        },
    });
    connack
        .encoded_len(ProtocolVersion::V5)
        .is_ok_and(|len| u32::try_from(len).is_ok_and(|len| len <= max))
}

/// Whether a topic name or filter is within the configured length and depth limits.
pub fn within_topic_limits(topic: &str, config: &MqttConfig) -> bool {
    topic.len() <= config.max_topic_length && topic.split('/').count() <= config.max_topic_levels
}

/// A client id for a client that sent none: unique in this process and unlikely to clash
/// with ids clients choose.
fn assign_client_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("midge-{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use midge_proto::{ConnectProperties, QoS, WillProperties};

    fn connect(protocol: ProtocolVersion, client_id: &str, clean_start: bool) -> Connect {
        Connect {
            protocol,
            clean_start,
            keep_alive: 60,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        }
    }

    #[test]
    fn empty_client_id_rules_per_version() {
        let config = MqttConfig::default();
        let v5 = negotiate(&connect(ProtocolVersion::V5, "", false), &config).unwrap();
        assert!(v5.assigned_client_id);
        assert_eq!(
            v5.connack.assigned_client_identifier.as_deref(),
            Some(&*v5.client_id)
        );

        let v311_clean = negotiate(&connect(ProtocolVersion::V311, "", true), &config).unwrap();
        assert!(v311_clean.client_id.starts_with("midge-"));
        assert_eq!(v311_clean.connack.assigned_client_identifier, None);

        let refused = negotiate(&connect(ProtocolVersion::V311, "", false), &config).unwrap_err();
        assert_eq!(refused.reason, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
        let refused = negotiate(&connect(ProtocolVersion::V31, "", true), &config).unwrap_err();
        assert_eq!(refused.reason, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    }

    #[test]
    fn assigned_ids_differ() {
        assert_ne!(assign_client_id(), assign_client_id());
    }

    #[test]
    fn keep_alive_above_max_is_lowered_for_v5_and_refused_for_v3() {
        let config = MqttConfig {
            max_keepalive: 30,
            ..MqttConfig::default()
        };
        let n = negotiate(&connect(ProtocolVersion::V5, "c", true), &config).unwrap();
        assert_eq!((n.keep_alive, n.connack.server_keep_alive), (30, Some(30)));
        let refused = negotiate(&connect(ProtocolVersion::V311, "c", true), &config).unwrap_err();
        assert_eq!(refused.reason.to_v3_connack(), 2);
    }

    #[test]
    fn keep_alive_0_is_capped_for_v5_only_when_max_keepalive_is_set() {
        let mut c = connect(ProtocolVersion::V5, "c", true);
        c.keep_alive = 0;
        let capped = MqttConfig {
            max_keepalive: 30,
            ..MqttConfig::default()
        };
        let n = negotiate(&c, &capped).unwrap();
        assert_eq!((n.keep_alive, n.connack.server_keep_alive), (30, Some(30)));
        let n = negotiate(&c, &MqttConfig::default()).unwrap();
        assert_eq!((n.keep_alive, n.connack.server_keep_alive), (0, None));
        c.protocol = ProtocolVersion::V311;
        let n = negotiate(&c, &capped).unwrap();
        assert_eq!(n.keep_alive, 0, "v3 cannot be told; 0 stays off");
    }

    #[test]
    fn session_expiry_per_version_and_cap() {
        let config = MqttConfig::default();
        // Issue 9, defect 8: v3 persistent sessions expire (7 days by default), or never
        // when the operator says so with 0.
        assert_eq!(
            negotiate(&connect(ProtocolVersion::V311, "c", false), &config)
                .unwrap()
                .expiry_interval,
            7 * 24 * 3600
        );
        let forever = MqttConfig {
            v3_session_expiry_secs: 0,
            ..MqttConfig::default()
        };
        assert_eq!(
            negotiate(&connect(ProtocolVersion::V311, "c", false), &forever)
                .unwrap()
                .expiry_interval,
            u32::MAX
        );
        assert_eq!(
            negotiate(&connect(ProtocolVersion::V311, "c", true), &config)
                .unwrap()
                .expiry_interval,
            0
        );
        let mut c = connect(ProtocolVersion::V5, "c", true);
        c.properties.session_expiry_interval = Some(7200);
        let capped = MqttConfig {
            max_session_expiry_secs: 3600,
            ..MqttConfig::default()
        };
        let n = negotiate(&c, &capped).unwrap();
        assert_eq!(
            (n.expiry_interval, n.connack.session_expiry_interval),
            (3600, Some(3600))
        );
    }

    #[test]
    fn an_authentication_method_is_left_to_the_listener() {
        let mut c = connect(ProtocolVersion::V5, "c", true);
        c.properties.authentication_method = Some("SCRAM-SHA-256".into());
        let n = negotiate(&c, &MqttConfig::default()).unwrap();
        // The CONNACK gets the method only once the exchange succeeds.
        assert_eq!(n.connack.authentication_method, None);
    }

    #[test]
    fn retained_will_is_refused_when_retain_is_unavailable() {
        let mut c = connect(ProtocolVersion::V5, "c", true);
        c.will = Some(Will {
            topic: "w".into(),
            payload: bytes::Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: WillProperties::default(),
        });
        let config = MqttConfig {
            retain_available: false,
            ..MqttConfig::default()
        };
        assert_eq!(
            negotiate(&c, &config).unwrap_err().reason,
            ReasonCode::RETAIN_NOT_SUPPORTED
        );
    }
}
