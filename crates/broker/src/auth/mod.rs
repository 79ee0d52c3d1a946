//! Authentication and authorization as the connection sees them. The connection awaits
//! these, so a backend may be slow (HTTP) without blocking the session machine.

use std::net::SocketAddr;

use midge_proto::ReasonCode;

use crate::config::Config;

/// What a client presents at CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// Client identifier.
    pub client_id: &'a str,
    /// User name, if given.
    pub username: Option<&'a str>,
    /// Password, if given.
    pub password: Option<&'a [u8]>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The identity of a client certificate the listener verified, when the listener uses
    /// it as the user name (`[listener.tls] cert_identity`).
    pub certificate_identity: Option<&'a str>,
}

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Publish to a topic name.
    Publish,
    /// Subscribe to a topic filter.
    Subscribe,
}

/// Who may connect, and what they may do. One per listener.
#[derive(Debug, Clone)]
pub struct AccessControl {
    /// `Some(true)`: anyone; `Some(false)`: nobody without credentials a backend accepts;
    /// `None`: anonymous clients only from loopback addresses.
    allow_anonymous: Option<bool>,
}

impl AccessControl {
    /// Access control from the `[auth]` section.
    pub fn from_config(config: &Config) -> Self {
        Self {
            allow_anonymous: config.auth.allow_anonymous,
        }
    }

    /// Whether anonymous clients are allowed from `peer`.
    fn anonymous_allowed(&self, peer: &SocketAddr) -> bool {
        self.allow_anonymous
            .unwrap_or_else(|| peer.ip().is_loopback())
    }

    /// Checks a CONNECT. There is no credential backend yet, so every client is anonymous
    /// and the anonymous policy decides.
    pub async fn authenticate(&self, credentials: &Credentials<'_>) -> Result<(), ReasonCode> {
        // A certificate verified against the listener's client CA is the credential.
        if credentials.certificate_identity.is_some() {
            return Ok(());
        }
        if self.anonymous_allowed(&credentials.peer) {
            Ok(())
        } else if credentials.username.is_some() {
            Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
        } else {
            Err(ReasonCode::NOT_AUTHORIZED)
        }
    }

    /// Checks a publish or subscribe. Without an ACL everything is allowed (the session
    /// machine itself keeps clients out of `$SYS`).
    pub async fn authorize(
        &self,
        _client_id: &str,
        _username: Option<&str>,
        _access: Access,
        _topic: &str,
    ) -> bool {
        true
    }

    /// A description for the start-up log.
    pub fn describe(&self) -> &'static str {
        match self.allow_anonymous {
            Some(true) => "anonymous access allowed from any address",
            Some(false) => "anonymous access refused",
            None => "anonymous access allowed from loopback addresses only",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(peer: &str) -> Credentials<'static> {
        Credentials {
            client_id: "c",
            username: None,
            password: None,
            peer: peer.parse().unwrap(),
            certificate_identity: None,
        }
    }

    #[tokio::test]
    async fn default_allows_anonymous_on_loopback_only() {
        let access = AccessControl {
            allow_anonymous: None,
        };
        assert!(
            access
                .authenticate(&credentials("127.0.0.1:5000"))
                .await
                .is_ok()
        );
        assert!(
            access
                .authenticate(&credentials("[::1]:5000"))
                .await
                .is_ok()
        );
        assert_eq!(
            access.authenticate(&credentials("192.0.2.7:5000")).await,
            Err(ReasonCode::NOT_AUTHORIZED)
        );
    }

    #[tokio::test]
    async fn verified_certificate_identity_needs_no_password() {
        let closed = AccessControl {
            allow_anonymous: Some(false),
        };
        let with_identity = Credentials {
            certificate_identity: Some("sensor-7"),
            ..credentials("192.0.2.7:5000")
        };
        assert!(closed.authenticate(&with_identity).await.is_ok());
        assert!(
            closed
                .authenticate(&credentials("192.0.2.7:5000"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn explicit_settings_apply_everywhere() {
        let open = AccessControl {
            allow_anonymous: Some(true),
        };
        assert!(
            open.authenticate(&credentials("192.0.2.7:5000"))
                .await
                .is_ok()
        );
        let closed = AccessControl {
            allow_anonymous: Some(false),
        };
        assert!(
            closed
                .authenticate(&credentials("127.0.0.1:5000"))
                .await
                .is_err()
        );
    }
}
