//! Reading the store back at start: every row decoded, sessions assembled with their
//! subscriptions, queues (in order), in-flight messages (in resend order), held QoS 2 ids
//! and delayed wills; the retained messages; and the writer's index (which rows exist,
//! message reference counts) rebuilt from the same rows.
//!
//! Strict by default: the first row that does not decode makes the store
//! [`StoreError::Damaged`]. With `--recover` such rows are dropped, counted in [`Losses`]
//! and deleted. Rows that simply no longer matter — a queue row of a session that is gone,
//! a message nothing references, an expired message — are cleaned up silently.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use midge_proto::{ReasonCode, Will};

use super::codec::{self, CodecError, SessionRecord};
use super::writer::{Index, InflightRow, MessageRef, QueueRow, RetainedRef, SessionRows};
use super::{FORMAT_KEY, FORMAT_VERSION, RowOp, Store, StoreError, Table};
use crate::model::{Delivery, Message, MessageId, Millis, now_millis};
use crate::model::{Inflight, SubscriptionRecord};

/// What the store held, ready to be put back into the broker.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Retained messages (unexpired).
    pub retained: Vec<Arc<Message>>,
    /// Stored sessions, including ones whose expiry passed while the broker was down (the
    /// broker ends them at start, publishing their wills).
    pub sessions: Vec<RecoveredSession>,
    /// What could not be read (only with `--recover`).
    pub losses: Losses,
    /// Queued messages dropped because they expired while the broker was down.
    pub expired_messages: usize,
    /// Durable AMQP queues, with their sessions (which are not among `sessions`).
    pub amqp_queues: Vec<RecoveredAmqpQueue>,
}

/// A durable queue read back at start: its declaration and, when it had one stored, its
/// session (bindings and persistent messages).
#[derive(Debug)]
pub struct RecoveredAmqpQueue {
    /// Queue name.
    pub name: String,
    /// Declaration; `None` when only its session was left (it is ended at start).
    pub record: Option<super::AmqpQueueRecord>,
    /// Its stored session.
    pub session: Option<RecoveredSession>,
}

/// One stored session.
#[derive(Debug)]
pub struct RecoveredSession {
    /// Client id.
    pub client_id: Arc<str>,
    /// Its incarnation id.
    pub session: u64,
    /// Session Expiry Interval, seconds.
    pub expiry_interval: u32,
    /// When it expires; `None` if it was connected when the broker stopped (it then gets
    /// its full expiry interval from the restart) or never expires.
    pub expires_at: Option<Millis>,
    /// Subscriptions by filter.
    pub subscriptions: Vec<(String, SubscriptionRecord)>,
    /// Queued deliveries with their queue sequence numbers, oldest first.
    pub queue: Vec<(u64, Delivery)>,
    /// In-flight messages in the order they were first sent.
    pub inflight: Vec<Inflight>,
    /// Inbound QoS 2 packet ids awaiting PUBREL, with their PUBREC reason.
    pub awaiting_pubrel: Vec<(u16, ReasonCode)>,
    /// A delayed will and when it is due.
    pub will: Option<(Will, Millis)>,
    /// Above every queue sequence number and in-flight order of the session.
    pub next_seq: u64,
}

/// What `--recover` dropped because it could not be read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Losses {
    /// Rows that did not decode, by table.
    pub undecodable: BTreeMap<&'static str, usize>,
    /// Queued or in-flight rows whose message was lost.
    pub missing_messages: usize,
}

impl Losses {
    /// True when nothing was lost.
    pub fn is_empty(&self) -> bool {
        self.undecodable.is_empty() && self.missing_messages == 0
    }

    /// One phrase per kind of loss, for the log.
    pub fn describe(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .undecodable
            .iter()
            .map(|(table, n)| format!("{n} undecodable row(s) in table `{table}`"))
            .collect();
        if self.missing_messages > 0 {
            out.push(format!(
                "{} queued or in-flight message(s) whose message record was lost",
                self.missing_messages
            ));
        }
        out
    }
}

/// The result of [`load`].
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) recovered: Recovered,
    pub(crate) index: Index,
    /// Row changes to commit first (deleting orphans, expired and undecodable rows; the
    /// format record of a new store).
    pub(crate) cleanup: Vec<RowOp>,
    pub(crate) max_message_id: MessageId,
    pub(crate) max_session_id: u64,
}

struct Loader {
    location: String,
    tolerant: bool,
    losses: Losses,
    cleanup: Vec<RowOp>,
}

impl Loader {
    /// A row that does not decode: fatal unless recovering, then dropped and counted.
    fn bad(&mut self, table: Table, key: &[u8], error: &CodecError) -> Result<(), StoreError> {
        if !self.tolerant {
            return Err(StoreError::Damaged {
                path: self.location.clone(),
                what: format!("a row of table `{}` does not decode: {error}", table.name()),
            });
        }
        *self.losses.undecodable.entry(table.name()).or_default() += 1;
        self.delete(table, key);
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) {
        self.cleanup.push(RowOp {
            table,
            key: key.to_vec(),
            value: None,
        });
    }
}

type RawRows = Vec<(Vec<u8>, Vec<u8>)>;

fn read_table(store: &dyn Store, table: Table) -> Result<RawRows, StoreError> {
    let mut rows = Vec::new();
    store.scan(table, &mut |k, v| rows.push((k.to_vec(), v.to_vec())))?;
    Ok(rows)
}

struct Building {
    record: SessionRecord,
    rows: SessionRows,
    subscriptions: Vec<(String, SubscriptionRecord)>,
    queue: Vec<(u64, Delivery)>,
    inflight: Vec<(u64, Inflight)>,
    awaiting_pubrel: Vec<(u16, ReasonCode)>,
    will: Option<(Will, Millis)>,
    next_seq: u64,
}

/// Reads every table of `store`. See the module documentation.
pub(crate) fn load(store: &dyn Store, tolerant: bool) -> Result<Loaded, StoreError> {
    let now = now_millis();
    let mut l = Loader {
        location: store.location(),
        tolerant,
        losses: Losses::default(),
        cleanup: Vec::new(),
    };
    let mut index = Index::default();
    let mut recovered = Recovered::default();
    let mut max_message_id = 0;
    let mut max_session_id = 0;

    // The format record first: a newer store is refused before anything is decoded.
    let meta = read_table(store, Table::Meta)?;
    let format = meta.iter().find(|(k, _)| k == FORMAT_KEY);
    match format {
        Some((_, v)) => match codec::decode_format(v) {
            Ok(found) if found > FORMAT_VERSION => {
                return Err(StoreError::NewerFormat {
                    path: l.location,
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            Ok(_) => {}
            Err(e) => {
                l.bad(Table::Meta, FORMAT_KEY, &e)?;
                l.cleanup.push(format_row());
            }
        },
        None => {
            let mut empty = true;
            for table in Table::ALL.into_iter().filter(|t| *t != Table::Meta) {
                store.scan(table, &mut |_, _| empty = false)?;
            }
            if !empty && !tolerant {
                return Err(StoreError::Damaged {
                    path: l.location,
                    what: "it holds data but no format record".into(),
                });
            }
            l.cleanup.push(format_row());
        }
    }

    // Messages, shared by queue and in-flight rows.
    let mut messages: HashMap<MessageId, (Arc<Message>, u64)> = HashMap::new();
    for (k, v) in read_table(store, Table::Messages)? {
        let decoded = codec::decode_message_key(&k).and_then(|id| codec::decode_message(id, &v));
        match decoded {
            Ok(m) => {
                max_message_id = max_message_id.max(m.id);
                messages.insert(m.id, (Arc::new(m), (k.len() + v.len()) as u64));
            }
            Err(e) => l.bad(Table::Messages, &k, &e)?,
        }
    }

    // Sessions.
    let mut sessions: BTreeMap<Arc<str>, Building> = BTreeMap::new();
    for (k, v) in read_table(store, Table::Sessions)? {
        let decoded = codec::split_client_key(&k, "session key").and_then(|(client, rest)| {
            if !rest.is_empty() {
                return Err(CodecError {
                    record: "session key",
                    field: "end of key",
                });
            }
            Ok((client, codec::decode_session(&v)?))
        });
        match decoded {
            Ok((client, record)) => {
                max_session_id = max_session_id.max(record.session);
                sessions.insert(
                    Arc::from(client),
                    Building {
                        record,
                        rows: SessionRows::new(record.session),
                        subscriptions: Vec::new(),
                        queue: Vec::new(),
                        inflight: Vec::new(),
                        awaiting_pubrel: Vec::new(),
                        will: None,
                        next_seq: 1,
                    },
                );
            }
            Err(e) => l.bad(Table::Sessions, &k, &e)?,
        }
    }

    // Subscriptions.
    for (k, v) in read_table(store, Table::Subscriptions)? {
        let decoded = codec::split_client_key(&k, "subscription key").and_then(|(c, rest)| {
            let filter = std::str::from_utf8(rest).map_err(|_| CodecError {
                record: "subscription key",
                field: "filter",
            })?;
            Ok((c, filter, codec::decode_subscription(&v)?))
        });
        match decoded {
            Ok((client, filter, record)) => match sessions.get_mut(client) {
                Some(s) => {
                    s.rows.subscriptions.insert(filter.to_owned());
                    s.subscriptions.push((filter.to_owned(), record));
                }
                None => l.delete(Table::Subscriptions, &k),
            },
            Err(e) => l.bad(Table::Subscriptions, &k, &e)?,
        }
    }

    // Queues, in key (= sequence) order.
    for (k, v) in read_table(store, Table::Queue)? {
        let decoded = codec::split_client_key(&k, "queue key").and_then(|(c, rest)| {
            Ok((
                c,
                codec::decode_u64_suffix(rest, "queue key")?,
                codec::decode_queued(&v)?,
            ))
        });
        let (client, seq, record) = match decoded {
            Ok(d) => d,
            Err(e) => {
                l.bad(Table::Queue, &k, &e)?;
                continue;
            }
        };
        let Some(s) = sessions.get_mut(client) else {
            l.delete(Table::Queue, &k);
            continue;
        };
        let Some((message, _)) = messages.get(&record.message) else {
            l.losses.missing_messages += 1;
            l.delete(Table::Queue, &k);
            continue;
        };
        if message.is_expired(now) {
            recovered.expired_messages += 1;
            l.delete(Table::Queue, &k);
            continue;
        }
        s.next_seq = s.next_seq.max(seq.saturating_add(1));
        s.rows.queue.insert(
            seq,
            QueueRow {
                message: record.message,
                bytes: (k.len() + v.len()) as u64,
            },
        );
        s.queue.push((seq, record.into_delivery(message.clone())));
    }

    // In-flight messages.
    for (k, v) in read_table(store, Table::Inflight)? {
        let decoded = codec::split_client_key(&k, "in-flight key").and_then(|(c, rest)| {
            Ok((
                c,
                codec::decode_u16_suffix(rest, "in-flight key")?,
                codec::decode_inflight(&v)?,
            ))
        });
        let (client, packet_id, record) = match decoded {
            Ok(d) => d,
            Err(e) => {
                l.bad(Table::Inflight, &k, &e)?;
                continue;
            }
        };
        let Some(s) = sessions.get_mut(client) else {
            l.delete(Table::Inflight, &k);
            continue;
        };
        let Some((message, _)) = messages.get(&record.delivery.message) else {
            l.losses.missing_messages += 1;
            l.delete(Table::Inflight, &k);
            continue;
        };
        s.next_seq = s.next_seq.max(record.order.saturating_add(1));
        s.rows.inflight.insert(
            packet_id,
            InflightRow {
                message: record.delivery.message,
                value: v.clone(),
            },
        );
        s.inflight.push((
            record.order,
            Inflight {
                packet_id,
                delivery: record.delivery.into_delivery(message.clone()),
                stage: record.stage,
            },
        ));
    }

    // Inbound QoS 2 ids awaiting PUBREL.
    for (k, v) in read_table(store, Table::Pubrel)? {
        let decoded = codec::split_client_key(&k, "pubrel key").and_then(|(c, rest)| {
            let packet_id = codec::decode_u16_suffix(rest, "pubrel key")?;
            Ok((c, packet_id, codec::decode_pubrel(&v)?))
        });
        match decoded {
            Ok((client, packet_id, reason)) => match sessions.get_mut(client) {
                Some(s) => {
                    s.rows.pubrel.insert(packet_id);
                    s.awaiting_pubrel.push((packet_id, reason));
                }
                None => l.delete(Table::Pubrel, &k),
            },
            Err(e) => l.bad(Table::Pubrel, &k, &e)?,
        }
    }

    // Delayed wills.
    for (k, v) in read_table(store, Table::Wills)? {
        let decoded = codec::split_client_key(&k, "will key")
            .and_then(|(c, _)| Ok((c, codec::decode_will(&v)?)));
        match decoded {
            Ok((client, record)) => match sessions.get_mut(client) {
                Some(s) if s.record.session == record.session => {
                    s.rows.will = true;
                    s.will = Some((record.will, record.publish_at));
                }
                _ => l.delete(Table::Wills, &k),
            },
            Err(e) => l.bad(Table::Wills, &k, &e)?,
        }
    }

    // Retained messages.
    for (k, v) in read_table(store, Table::Retained)? {
        match codec::decode_retained(&v) {
            Ok(m) if m.is_expired(now) => l.delete(Table::Retained, &k),
            Ok(m) => {
                max_message_id = max_message_id.max(m.id);
                index.retained.insert(
                    m.topic.clone(),
                    RetainedRef {
                        bytes: (k.len() + v.len()) as u64,
                        expires_at: m.expires_at,
                    },
                );
                recovered.retained.push(Arc::new(m));
            }
            Err(e) => l.bad(Table::Retained, &k, &e)?,
        }
    }

    // Reference counts; messages nothing references any more go.
    for s in sessions.values() {
        let ids = s
            .rows
            .queue
            .values()
            .map(|q| q.message)
            .chain(s.rows.inflight.values().map(|i| i.message));
        for id in ids {
            let (message, bytes) = &messages[&id];
            index
                .messages
                .entry(id)
                .or_insert_with(|| MessageRef {
                    count: 0,
                    bytes: *bytes,
                    expires_at: message.expires_at,
                    stored: true,
                })
                .count += 1;
        }
    }
    for id in messages.keys() {
        if !index.messages.contains_key(id) {
            l.delete(Table::Messages, &codec::message_key(*id));
        }
    }

    // Durable AMQP queue declarations; their sessions are matched below.
    let mut amqp_queues: BTreeMap<String, super::RecoveredAmqpQueue> = BTreeMap::new();
    for (k, v) in read_table(store, Table::AmqpQueues)? {
        let decoded = std::str::from_utf8(&k)
            .map_err(|_| CodecError {
                record: "amqp queue key",
                field: "name",
            })
            .and_then(|name| Ok((name, super::amqp::decode(&v)?)));
        match decoded {
            Ok((name, record)) => {
                amqp_queues.insert(
                    name.to_owned(),
                    super::RecoveredAmqpQueue {
                        name: name.to_owned(),
                        record: Some(record),
                        session: None,
                    },
                );
            }
            Err(e) => l.bad(Table::AmqpQueues, &k, &e)?,
        }
    }

    for (client, mut s) in sessions {
        s.inflight.sort_by_key(|(order, _)| *order);
        index.sessions.insert(client.clone(), s.rows);
        let session = RecoveredSession {
            client_id: client.clone(),
            session: s.record.session,
            expiry_interval: s.record.expiry_interval,
            expires_at: s.record.expires_at,
            subscriptions: s.subscriptions,
            queue: s.queue,
            inflight: s.inflight.into_iter().map(|(_, i)| i).collect(),
            awaiting_pubrel: s.awaiting_pubrel,
            will: s.will,
            next_seq: s.next_seq,
        };
        // A queue's session without a declaration (the queue was being deleted when the
        // broker stopped) is handed over too: the broker ends it.
        match client.strip_prefix(crate::model::AMQP_QUEUE_OWNER_PREFIX) {
            Some(name) => {
                amqp_queues
                    .entry(name.to_owned())
                    .or_insert_with(|| super::RecoveredAmqpQueue {
                        name: name.to_owned(),
                        record: None,
                        session: None,
                    })
                    .session = Some(session);
            }
            None => recovered.sessions.push(session),
        }
    }
    recovered.amqp_queues = amqp_queues.into_values().collect();
    recovered.losses = l.losses;
    Ok(Loaded {
        recovered,
        index,
        cleanup: l.cleanup,
        max_message_id,
        max_session_id,
    })
}

fn format_row() -> RowOp {
    RowOp {
        table: Table::Meta,
        key: FORMAT_KEY.to_vec(),
        value: Some(codec::encode_format(FORMAT_VERSION)),
    }
}
