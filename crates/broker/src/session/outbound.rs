//! Outbound delivery: pumping the retained backlog and the mailbox into the output within
//! the client's Receive Maximum, encoding each PUBLISH, and the acknowledgements that
//! settle them (PUBACK, PUBREC, PUBCOMP).

use bytes::BytesMut;
use midge_proto::{OutgoingPublish, Packet, PubResponse, QoS, ReasonCode};

use super::Session;
use crate::model::{Delivery, Inflight, Millis, Stage};
use crate::stats::LocalStats;
use crate::store::SessionJournal;

impl Session {
    pub(super) fn on_puback(&mut self, ack: &PubResponse) {
        match self.state.inflight_position(ack.packet_id) {
            Some(i) if self.state.inflight[i].stage == Stage::AwaitPubAck => {
                self.state.inflight.remove(i);
                if let Some(journal) = self.journal() {
                    journal.acked(ack.packet_id);
                }
            }
            _ => {
                tracing::debug!(client_id = %self.state.client_id, packet_id = ack.packet_id, "PUBACK for unknown packet id")
            }
        }
    }

    pub(super) fn on_pubrec(&mut self, rec: &PubResponse, out: &mut BytesMut) {
        let found = match self.state.inflight_position(rec.packet_id) {
            Some(i) if self.state.inflight[i].stage != Stage::AwaitPubAck => {
                if rec.reason_code.is_error() {
                    // [MQTT-4.3.3-4] an error PUBREC ends the exchange; no PUBREL.
                    self.state.inflight.remove(i);
                    if let Some(journal) = self.journal() {
                        journal.acked(rec.packet_id);
                    }
                    return;
                }
                self.state.inflight[i].stage = Stage::AwaitPubComp;
                if let Some(journal) = self.journal() {
                    journal.stage(rec.packet_id, Stage::AwaitPubComp);
                }
                true
            }
            _ => false,
        };
        let reason = if found || !self.protocol.is_v5() {
            ReasonCode::SUCCESS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        let response = PubResponse {
            packet_id: rec.packet_id,
            reason_code: reason,
            properties: Default::default(),
        };
        self.send(&Packet::PubRel(response), out);
    }

    pub(super) fn on_pubcomp(&mut self, comp: &PubResponse) {
        match self.state.inflight_position(comp.packet_id) {
            Some(i) if self.state.inflight[i].stage == Stage::AwaitPubComp => {
                self.state.inflight.remove(i);
                if let Some(journal) = self.journal() {
                    journal.acked(comp.packet_id);
                }
            }
            _ => {
                tracing::debug!(client_id = %self.state.client_id, packet_id = comp.packet_id, "PUBCOMP for unknown packet id")
            }
        }
    }

    /// Moves deliveries from the retained backlog and the mailbox into `out`, as far as the
    /// client's Receive Maximum allows, until `out` holds about `max_bytes`.
    pub fn pump(&mut self, now: Millis, out: &mut BytesMut, max_bytes: usize) {
        // Scratch for this call only (allocated only when something is pumped): kept in
        // the session, it would hold up to 64 deliveries' worth of capacity for the life
        // of a connection that once had a burst.
        let mut batch = Vec::new();
        let mut queued = Vec::new();
        while out.len() < max_bytes {
            // Taken in batches of up to 64, fewer when little room is left (counting 1 KiB
            // a delivery), so a small `max_bytes` is not overshot by 64 messages.
            let take = ((max_bytes - out.len()) / 1024).clamp(1, 64);
            let window = usize::from(self.send_window).saturating_sub(self.state.inflight_len());
            // The retained backlog goes first; it only exists right after SUBSCRIBE.
            if let Some(backlog) = self
                .rare
                .as_mut()
                .map(|r| &mut r.retained_backlog)
                .filter(|b| !b.is_empty())
            {
                let mut window = window;
                while let Some(front) = backlog.front() {
                    if front.qos != QoS::AtMostOnce {
                        if window == 0 {
                            break;
                        }
                        window -= 1;
                    }
                    batch.extend(backlog.pop_front());
                    if batch.len() >= take {
                        break;
                    }
                }
                if backlog.is_empty() {
                    self.trim_rare();
                }
                if batch.is_empty() {
                    break;
                }
                for delivery in batch.drain(..) {
                    self.deliver(None, delivery, now, out);
                }
            } else {
                self.state.mailbox.pop_queued(take, window, &mut queued);
                if queued.is_empty() {
                    break;
                }
                for q in queued.drain(..) {
                    self.deliver(Some(q.seq), q.delivery, now, out);
                }
            }
        }
    }

    /// Sends one delivery; `seq` is its place in the mailbox queue (none for retained
    /// messages sent at subscribe).
    fn deliver(&mut self, seq: Option<u64>, delivery: Delivery, now: Millis, out: &mut BytesMut) {
        // Where a QoS 1/2 delivery that is not sent leaves the stored queue.
        let dropped = |journal: Option<&SessionJournal>| {
            if let (Some(journal), Some(seq)) = (journal, seq)
                && delivery.qos != QoS::AtMostOnce
            {
                journal.dequeue(seq);
            }
        };
        if let Some(filter) = self.rare.as_ref().and_then(|r| r.delivery_filter.as_ref())
            && !filter.allows(&delivery.message.topic)
        {
            tracing::trace!(client_id = %self.state.client_id, topic = %delivery.message.topic, "delivery not authorized");
            LocalStats::count(|c| c.publish_denied += 1);
            dropped(self.journal());
            return;
        }
        if delivery.message.is_expired(now) {
            // [MQTT-3.3.2-5] an expired message is not sent.
            LocalStats::count(|c| {
                c.publish_dropped += 1;
                c.dropped_expired += 1;
            });
            dropped(self.journal());
            return;
        }
        if delivery.qos == QoS::AtMostOnce {
            self.write_publish(&delivery, 0, false, now, out);
            return;
        }
        let packet_id = self.state.allocate_packet_id();
        if self.write_publish(&delivery, packet_id, false, now, out) {
            let stage = if delivery.qos == QoS::AtLeastOnce {
                Stage::AwaitPubAck
            } else {
                Stage::AwaitPubRec
            };
            if let Some(journal) = self.journal() {
                let order = self.state.mailbox.next_seq();
                journal.dispatch(seq, packet_id, order, stage, &delivery);
            }
            self.state.inflight.push_back(Inflight {
                packet_id,
                delivery,
                stage,
            });
        } else {
            dropped(self.journal());
        }
    }

    /// Encodes one PUBLISH. Returns false (and counts a drop) if it exceeds the client's
    /// Maximum Packet Size [MQTT-3.1.2-24] [MQTT-3.1.2-25].
    pub(super) fn write_publish(
        &mut self,
        delivery: &Delivery,
        packet_id: u16,
        dup: bool,
        now: Millis,
        out: &mut BytesMut,
    ) -> bool {
        let message = &delivery.message;
        // Aliases are per connection; a resend (dup) may follow a reconnect, so it always
        // carries the full topic.
        let (topic, topic_alias) = if dup {
            (message.topic.as_str(), None)
        } else {
            self.outbound_alias(&message.topic)
        };
        let publish = OutgoingPublish {
            dup,
            qos: delivery.qos,
            retain: delivery.retain,
            topic,
            packet_id,
            properties: &message.properties,
            topic_alias,
            message_expiry_interval: message.remaining_expiry(now),
            subscription_identifiers: &delivery.subscription_ids,
            payload: &message.payload,
        };
        let fits = publish.encoded_len(self.protocol).is_ok_and(|len| {
            u32::try_from(len).is_ok_and(|len| len <= self.client_max_packet_size)
        });
        if !fits {
            // With a fresh alias, the client has not learned it: forget it.
            if topic_alias.is_some()
                && !topic.is_empty()
                && let Some(aliases) = self.rare.as_mut().and_then(|r| r.aliases.as_mut())
            {
                aliases.outbound.remove(&message.topic);
            }
            tracing::debug!(client_id = %self.state.client_id, topic = %message.topic, "message exceeds the client's maximum packet size, dropped");
            LocalStats::count(|c| c.publish_dropped += 1);
            return false;
        }
        self.settle |= delivery.qos == QoS::ExactlyOnce;
        match publish.encode(self.protocol, out) {
            Ok(()) => {
                LocalStats::count(|c| {
                    c.packets_sent += 1;
                    c.sent(delivery.qos);
                });
                true
            }
            Err(e) => {
                tracing::warn!(client_id = %self.state.client_id, error = %e, "cannot encode PUBLISH");
                LocalStats::count(|c| c.publish_dropped += 1);
                false
            }
        }
    }

    /// True when the retained backlog or the mailbox could give `pump` something now. The
    /// mailbox's length is read without its lock: a delivery queued after the read wakes
    /// the connection, which looks again.
    pub fn has_pending(&self) -> bool {
        self.rare
            .as_ref()
            .is_some_and(|r| !r.retained_backlog.is_empty())
            || self.state.mailbox.backlog() > 0
    }
}
