//! Client-id ownership: how the holder of a client id is told to let its session go when
//! another connection claims the id. The seam where a cluster adds cluster-wide uniqueness
//! and takeover: its implementation would also ask the node holding the id and wait for it
//! to park and hand over the session.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use midge_proto::Will;
use tokio::sync::oneshot;

use crate::mailbox::{Control, Mailbox};

/// Resolves once a client id is the claiming connection's cluster-wide, with the session
/// another node handed over (encoded, `cluster::sessions`), if any; an error says why
/// the CONNECT cannot be served now (CONNACK 0x88).
pub type Claim = Pin<Box<dyn Future<Output = Result<Option<bytes::Bytes>, &'static str>> + Send>>;

/// See the module documentation. `ask_to_leave` and `unanswered` are called with the
/// registry's lock held: they must only send, never wait.
pub trait Ownership: Send + Sync + fmt::Debug {
    /// Tells whoever serves `client_id` through `mailbox` to let the session go (an MQTT
    /// connection sends DISCONNECT 0x8E, parks the session, then answers). The receiver
    /// resolves once it has.
    fn ask_to_leave(&self, client_id: &Arc<str>, mailbox: &Mailbox) -> oneshot::Receiver<()>;

    /// The holder behind `mailbox` let go on its own (EOF, DISCONNECT) before reading a
    /// request to leave: the request's answer, to send once the session is parked.
    fn unanswered(&self, mailbox: &Mailbox) -> Option<oneshot::Sender<()>>;

    /// After connection `connection_id` attached `client_id` here (with `clean_start`):
    /// what claims the id beyond this process, awaited before CONNACK. `None` (the single
    /// node): nothing to wait for, and nothing allocated.
    fn claim(
        &self,
        _client_id: &Arc<str>,
        _connection_id: u64,
        _clean_start: bool,
    ) -> Option<Claim> {
        None
    }

    /// Connection `connection_id` no longer serves `client_id` (called without the
    /// registry's lock).
    fn release(&self, _client_id: &Arc<str>, _connection_id: u64) {}

    /// What a cluster keeps beyond this process of a persistent session about to be
    /// parked (encoded before the registry's lock is taken). `None` on a single node.
    fn session_record(&self, _state: &crate::session::SessionState) -> Option<bytes::Bytes> {
        None
    }

    /// `client_id`'s session was parked until `expires_at` (`None`: never), as
    /// `record` says (called without the registry's lock).
    fn parked(&self, _client_id: &Arc<str>, _record: bytes::Bytes, _expires_at: Option<u64>) {}

    /// `client_id`'s persistent session is connected here with the subscriptions `record`
    /// says (`None`: none): a cluster keeps them while it is, so a node that dies with the
    /// client connected does not take them along.
    fn connected(&self, _client_id: &Arc<str>, _record: Option<bytes::Bytes>) {}

    /// Connection `connection_id` of `client_id` was accepted (claimed) with a will due
    /// `delay` seconds after it ends, in a session expiring `expiry` seconds after it;
    /// `will` is `None` when it is not to be kept beyond this process. Only called when
    /// [`Ownership::claim`] gave a claim.
    fn will_accepted(
        &self,
        _client_id: &Arc<str>,
        _connection_id: u64,
        _will: Option<&Will>,
        _delay: u32,
        _expiry: u32,
    ) {
    }

    /// `client_id`'s will is due here: given back to be published now (the single node),
    /// or taken, to be published once no other node can (a cluster).
    fn will_due(&self, _client_id: &Arc<str>, will: Will) -> Option<Will> {
        Some(will)
    }

    /// `client_id`'s will was cancelled here: the session resumed, or connection
    /// `connection_id` ended without one (called without the registry's lock).
    fn will_cancelled(&self, _client_id: &Arc<str>, _connection_id: Option<u64>) {}
}

/// The single node's ownership: every client id is held in this process, and its holder
/// is reached through the session's mailbox.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalOwnership;

impl Ownership for LocalOwnership {
    fn ask_to_leave(&self, _client_id: &Arc<str>, mailbox: &Mailbox) -> oneshot::Receiver<()> {
        let (reply, done) = oneshot::channel();
        mailbox.send_control(Control::TakeOver(reply));
        done
    }

    fn unanswered(&self, mailbox: &Mailbox) -> Option<oneshot::Sender<()>> {
        // A kick or describe pending for a connection that already ended is moot.
        match mailbox.take_control() {
            Some(Control::TakeOver(reply)) => Some(reply),
            _ => None,
        }
    }
}
