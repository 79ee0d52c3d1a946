//! SUBSCRIBE and UNSUBSCRIBE, retained messages at subscribe, and what leaving a
//! subscription does to deliveries already queued for it.

use std::collections::VecDeque;

use bytes::BytesMut;
use midge_proto::{
    Packet, ReasonCode, ResponseProperties, SubAck, Subscribe, UnsubAck, Unsubscribe, topic,
};

use super::{Session, SessionEnv, Violation, violation, within_topic_limits};
use crate::mailbox::Mailbox;
use crate::model::{Delivery, Message, Millis, QueueLimits, Stage, SubscriptionRecord};
use crate::stats::{LocalStats, Stats};

impl Session {
    /// Removes a subscription without telling the client (a resumed subscription that
    /// is no longer authorized).
    pub fn drop_subscription(&mut self, filter: &str, env: &impl SessionEnv) {
        if self.state.subscriptions.remove(filter).is_some() {
            self.state.subscription_changes += 1;
            env.unsubscribe(filter, &self.state.client_id);
            if let Some(journal) = self.journal() {
                journal.unsubscribe(filter);
            }
            self.hand_over_shared(filter, env);
        }
    }

    /// Forgets queued and unacknowledged deliveries that no remaining subscription
    /// matches, after subscriptions were dropped: what was queued for them must not reach
    /// a client that may no longer have them. Released QoS 2 exchanges (PUBREL pending)
    /// carry no message and stay. Returns how many were dropped.
    pub fn forget_unmatched_deliveries(&mut self) -> usize {
        let filters: Vec<&str> = self
            .state
            .subscriptions
            .keys()
            .map(|f| match topic::parse_shared(f) {
                Ok(Some(shared)) => shared.filter,
                _ => f.as_str(),
            })
            .collect();
        let wanted = |d: &Delivery| filters.iter().any(|f| topic::matches(f, &d.message.topic));
        let queued = self.state.mailbox.retain_deliveries(|d| wanted(d));
        let inflight_before = self.state.inflight.len();
        let journal = super::journal_of(&self.state.mailbox, self.stored);
        self.state.inflight.retain(|i| {
            let keep = i.stage == Stage::AwaitPubComp || wanted(&i.delivery);
            if !keep && let Some(journal) = journal {
                journal.acked(i.packet_id);
            }
            keep
        });
        let dropped = queued + inflight_before - self.state.inflight.len();
        LocalStats::count(|c| c.publish_denied += dropped as u32);
        dropped
    }

    /// Handles SUBSCRIBE. `authorized[i]` is the verdict for the i-th filter.
    pub fn subscribe(
        &mut self,
        subscribe: Subscribe,
        authorized: &[bool],
        env: &impl SessionEnv,
        now: Millis,
        out: &mut BytesMut,
    ) -> Result<(), Violation> {
        let config = env.mqtt();
        let identifier = subscribe.properties.subscription_identifier;
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        // Retained messages sent at subscribe count against the queue limits, as queued
        // messages do: one SUBSCRIBE repeating `#` must not queue copies of the whole
        // retained tree without end (issue 9, defect 2).
        let limits = env.queue_limits();
        let mut backlog = RetainedBudget::new(
            &limits,
            self.rare.as_ref().map(|r| &r.retained_backlog),
            &self.state.mailbox,
        );
        let mut collected: Vec<&str> = Vec::new();
        let filters = subscribe.filters;
        for (i, (filter, options)) in filters.iter().enumerate() {
            let (filter, options) = (filter.clone(), *options);
            let shared = topic::parse_shared(&filter).ok().flatten().is_some();
            if shared && options.no_local && self.protocol.is_v5() {
                // [MQTT-3.8.3-4]
                return Err(violation(
                    ReasonCode::PROTOCOL_ERROR,
                    "no-local on a shared subscription",
                ));
            }
            let reason = if topic::validate_topic_filter(&filter).is_err()
                || !within_topic_limits(&filter, config)
            {
                ReasonCode::TOPIC_FILTER_INVALID
            } else if !authorized.get(i).copied().unwrap_or(false) {
                ReasonCode::NOT_AUTHORIZED
            } else if config.max_subscriptions_per_client > 0
                && !self.state.subscriptions.contains_key(&filter)
                && self.state.subscriptions.len() >= config.max_subscriptions_per_client
            {
                ReasonCode::QUOTA_EXCEEDED
            } else {
                let existed = env.subscribe(&self.state.mailbox, &filter, options, identifier);
                // [MQTT-3.8.4-3] a repeated filter replaces the subscription.
                let record = SubscriptionRecord {
                    options,
                    identifier,
                };
                self.state.subscriptions.insert(filter.clone(), record);
                self.state.subscription_changes += 1;
                if let Some(journal) = self.journal() {
                    journal.subscribe(&filter, record);
                }
                // Shared subscriptions get no retained messages at subscribe [MQTT-4.8.2-?].
                let send_retained = !shared
                    && config.retain_available
                    && match options.retain_handling {
                        midge_proto::RetainHandling::SendAtSubscribe => true,
                        midge_proto::RetainHandling::SendIfNew => !existed,
                        midge_proto::RetainHandling::DontSend => false,
                    };
                // A filter repeated in one SUBSCRIBE replaces itself: its retained
                // messages are sent once.
                let repeated = collected.contains(&filters[i].0.as_str());
                if send_retained && !repeated {
                    collected.push(filters[i].0.as_str());
                    for message in env.retained(&filter, now) {
                        if !backlog.admit(&message) {
                            continue;
                        }
                        retained.push(Delivery {
                            qos: message.qos.min(options.qos),
                            // [MQTT-3.3.1-8] retained messages sent at subscribe keep RETAIN.
                            retain: true,
                            subscription_ids: identifier.into_iter().collect(),
                            shared: None,
                            message,
                        });
                    }
                }
                // [MQTT-3.9.3-?] granted QoS is what was asked; QoS 2 is supported.
                ReasonCode(options.qos as u8)
            };
            if reason.is_error() {
                tracing::debug!(client_id = %self.state.client_id, %filter, %reason, "subscription refused");
            }
            reasons.push(reason);
        }
        let suback = SubAck {
            packet_id: subscribe.packet_id,
            reason_codes: reasons,
            properties: ResponseProperties::default(),
        };
        // [MQTT-3.8.4-1] SUBACK first, then the retained messages.
        self.send(&Packet::SubAck(suback), out);
        if !retained.is_empty() {
            self.rare_mut().retained_backlog.extend(retained);
        }
        Stats::add(&env.stats().retained_dropped, backlog.refused);
        Ok(())
    }

    pub(super) fn unsubscribe(
        &mut self,
        unsubscribe: Unsubscribe,
        env: &impl SessionEnv,
        out: &mut BytesMut,
    ) {
        let allowed = vec![true; unsubscribe.filters.len()];
        self.unsubscribe_authorized(unsubscribe, &allowed, env, out);
    }

    /// UNSUBSCRIBE with one authorization verdict per filter (dynamic security's
    /// unsubscribe ACLs): a refused filter stays subscribed, and MQTT 5 is told 0x87.
    pub fn unsubscribe_authorized(
        &mut self,
        unsubscribe: Unsubscribe,
        allowed: &[bool],
        env: &impl SessionEnv,
        out: &mut BytesMut,
    ) {
        let reasons = unsubscribe
            .filters
            .iter()
            .enumerate()
            .map(|(i, filter)| {
                if topic::validate_topic_filter(filter).is_err() {
                    return ReasonCode::TOPIC_FILTER_INVALID;
                }
                if !allowed.get(i).copied().unwrap_or(true) {
                    return ReasonCode::NOT_AUTHORIZED;
                }
                let known = self.state.subscriptions.remove(filter).is_some();
                self.state.subscription_changes += u64::from(known);
                env.unsubscribe(filter, &self.state.client_id);
                if known {
                    if let Some(journal) = self.journal() {
                        journal.unsubscribe(filter);
                    }
                    self.hand_over_shared(filter, env);
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        let unsuback = UnsubAck {
            packet_id: unsubscribe.packet_id,
            reason_codes: reasons,
            properties: ResponseProperties::default(),
        };
        self.send(&Packet::UnsubAck(unsuback), out);
    }

    /// Queued deliveries of a shared subscription this session left go to another member.
    fn hand_over_shared(&self, filter: &str, env: &impl SessionEnv) {
        if !filter.starts_with("$share/") {
            return;
        }
        let mailbox = &self.state.mailbox;
        // Taken out first and handed over with no mailbox lock held: routing takes the
        // trie lock and other mailboxes' locks (see ARCHITECTURE.md, "Lock hierarchy").
        let taken = mailbox.take_deliveries(|d| d.shared.as_deref() == Some(filter));
        if taken.is_empty() {
            return;
        }
        let deliveries: Vec<Delivery> = taken.iter().map(|q| q.delivery.clone()).collect();
        let handed = env.hand_over(&deliveries, &self.state.client_id);
        let mut kept = Vec::new();
        for (queued, handed) in taken.into_iter().zip(handed) {
            if handed {
                mailbox.forget_stored(queued.seq);
            } else {
                // No other member took it: it stays here, as without the hand-over.
                kept.push(queued);
            }
        }
        mailbox.reinsert(kept);
    }
}

/// How many more retained messages one SUBSCRIBE may put in the session's backlog: the
/// backlog and the queue together stay within the queue limits (0 means unlimited).
struct RetainedBudget {
    messages: usize,
    bytes: usize,
    limits: QueueLimits,
    refused: u64,
}

impl RetainedBudget {
    fn new(limits: &QueueLimits, backlog: Option<&VecDeque<Delivery>>, mailbox: &Mailbox) -> Self {
        let backlog = backlog.into_iter().flatten();
        Self {
            messages: backlog.clone().count() + mailbox.len(),
            bytes: backlog.map(|d| d.message.weight()).sum(),
            limits: *limits,
            refused: 0,
        }
    }

    /// Counts `message` in if it fits; otherwise counts it refused.
    fn admit(&mut self, message: &Message) -> bool {
        let weight = message.weight();
        let full = (self.limits.max_messages > 0 && self.messages >= self.limits.max_messages)
            || (self.limits.max_bytes > 0
                && self.messages > 0
                && self.bytes + weight > self.limits.max_bytes);
        if full {
            self.refused += 1;
            return false;
        }
        self.messages += 1;
        self.bytes += weight;
        true
    }
}
