//! What can go wrong talking to a broker, sorted by what a caller does about it.

use std::io;

use midge_proto::{DecodeError, EncodeError, ProtocolVersion, ReasonCode};

/// Every failure of the client. [`Error::is_auth`] and friends group the variants the way
/// a command-line tool maps them to exit codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker answered CONNECT with a refusal. `reason` is the v5 reason code; a v3
    /// return code is mapped to its v5 equivalent ([`ReasonCode::from_v3_connack`]) and
    /// kept in `v3_return_code`.
    #[error("{}", refused_message(*.reason, *.v3_return_code, .reason_string.as_deref()))]
    Refused {
        /// The v5 reason code (or the v5 equivalent of the v3 return code).
        reason: ReasonCode,
        /// The v3 CONNACK return code, for v3 connections.
        v3_return_code: Option<u8>,
        /// The v5 Reason String property, if the broker sent one.
        reason_string: Option<String>,
    },
    /// The connection could not be opened or broke: DNS, TCP, the TLS handshake, the
    /// WebSocket upgrade, or a read or write after that.
    #[error("{context}: {source}")]
    Network {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// TLS settings that cannot be used: unreadable or invalid certificate or key files,
    /// no trust anchors.
    #[error("TLS: {0}")]
    TlsConfig(String),
    /// Nothing came back in time.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The broker sent bytes that are not MQTT.
    #[error("bad packet from the broker: {0}")]
    Decode(#[from] DecodeError),
    /// A packet could not be encoded (a field too long for MQTT).
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    /// The broker broke a protocol rule (an unexpected packet).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The broker refused a request after connecting: a PUBACK/PUBREC, SUBACK or
    /// UNSUBACK reason of 0x80 or above.
    #[error("{what} refused: {} ({:#04x})", .reason.description(), .reason.0)]
    Rejected {
        /// `publish`, `subscribe to <filter>`, ...
        what: String,
        /// The reason code (v3 SUBACK failures are 0x80).
        reason: ReasonCode,
    },
    /// The broker sent DISCONNECT (v5 carries a reason).
    #[error("{}", disconnected_message(*.reason, .reason_string.as_deref()))]
    Disconnected {
        /// The reason code; normal disconnection for v3.
        reason: ReasonCode,
        /// The v5 Reason String property.
        reason_string: Option<String>,
    },
    /// The broker closed the connection without DISCONNECT.
    #[error("the broker closed the connection")]
    Closed,
    /// A request the chosen protocol version cannot express.
    #[error("{0}")]
    Unsupported(String),
}

fn refused_message(reason: ReasonCode, v3: Option<u8>, reason_string: Option<&str>) -> String {
    let mut text = match v3 {
        Some(code) => format!(
            "connection refused: {} (return code {code})",
            reason.description()
        ),
        None => format!(
            "connection refused: {} ({:#04x})",
            reason.description(),
            reason.0
        ),
    };
    push_reason_string(&mut text, reason, reason_string);
    text
}

/// Appends the broker's reason string, unless it only repeats the reason code's own
/// description (midge sends that when it has nothing more to say).
fn push_reason_string(text: &mut String, reason: ReasonCode, reason_string: Option<&str>) {
    if let Some(extra) = reason_string
        && !extra.eq_ignore_ascii_case(reason.description())
    {
        text.push_str(": ");
        text.push_str(extra);
    }
}

fn disconnected_message(reason: ReasonCode, reason_string: Option<&str>) -> String {
    let mut text = format!(
        "disconnected by the broker: {} ({:#04x})",
        reason.description(),
        reason.0
    );
    push_reason_string(&mut text, reason, reason_string);
    text
}

impl Error {
    pub(crate) fn network(context: impl Into<String>, source: io::Error) -> Self {
        Self::Network {
            context: context.into(),
            source,
        }
    }

    /// A refusal for credentials or permissions: CONNACK bad user name or password, not
    /// authorized, banned, bad authentication method (v3 return codes 4 and 5), or a
    /// request refused as not authorized.
    pub fn is_auth(&self) -> bool {
        match self {
            Self::Refused { reason, .. } => matches!(
                *reason,
                ReasonCode::BAD_USER_NAME_OR_PASSWORD
                    | ReasonCode::NOT_AUTHORIZED
                    | ReasonCode::BANNED
                    | ReasonCode::BAD_AUTHENTICATION_METHOD
            ),
            Self::Rejected { reason, .. } => *reason == ReasonCode::NOT_AUTHORIZED,
            _ => false,
        }
    }

    /// The connection could not be opened (or broke): nothing answered, TLS or WebSocket
    /// failed.
    pub fn is_network(&self) -> bool {
        matches!(self, Self::Network { .. } | Self::Closed)
    }
}

/// The v5 reason for a CONNACK code as decoded: v3 CONNACKs already decode to their v5
/// equivalent, so this only recovers the v3 return code for the message.
pub(crate) fn v3_return_code(version: ProtocolVersion, reason: ReasonCode) -> Option<u8> {
    (!version.is_v5()).then(|| reason.to_v3_connack())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_reason_and_code() {
        let v5 = Error::Refused {
            reason: ReasonCode::NOT_AUTHORIZED,
            v3_return_code: None,
            reason_string: None,
        };
        assert_eq!(v5.to_string(), "connection refused: not authorized (0x87)");
        assert!(v5.is_auth());
        let v3 = Error::Refused {
            reason: ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            v3_return_code: v3_return_code(
                ProtocolVersion::V311,
                ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            ),
            reason_string: None,
        };
        assert_eq!(
            v3.to_string(),
            "connection refused: bad user name or password (return code 4)"
        );
        assert!(v3.is_auth());
        let busy = Error::Refused {
            reason: ReasonCode::SERVER_BUSY,
            v3_return_code: None,
            reason_string: Some("try later".into()),
        };
        assert_eq!(
            busy.to_string(),
            "connection refused: server busy (0x89): try later"
        );
        assert!(!busy.is_auth());
    }

    #[test]
    fn a_reason_string_that_repeats_the_code_is_not_printed_twice() {
        let repeated = Error::Disconnected {
            reason: ReasonCode::MESSAGE_RATE_TOO_HIGH,
            reason_string: Some("message rate too high".into()),
        };
        assert_eq!(
            repeated.to_string(),
            "disconnected by the broker: message rate too high (0x96)"
        );
        let more = Error::Disconnected {
            reason: ReasonCode::SESSION_TAKEN_OVER,
            reason_string: Some("another connection".into()),
        };
        assert_eq!(
            more.to_string(),
            "disconnected by the broker: session taken over (0x8e): another connection"
        );
        let refused = Error::Refused {
            reason: ReasonCode::SERVER_BUSY,
            v3_return_code: None,
            reason_string: Some("Server busy".into()),
        };
        assert_eq!(
            refused.to_string(),
            "connection refused: server busy (0x89)"
        );
    }
}
