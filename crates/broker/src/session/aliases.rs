//! Topic aliases of one connection, both ways: the client's (resolved on PUBLISH) and ours
//! (chosen when sending).

use std::collections::HashMap;

use midge_proto::{Publish, ReasonCode};

use super::{Session, Violation, violation};

/// Topic aliases of one connection, both ways.
#[derive(Debug, Default)]
pub(super) struct Aliases {
    /// Topic -> alias we told the client. Aliases are never reassigned, so the map only
    /// grows to the client's maximum.
    pub(super) outbound: HashMap<String, u16>,
    /// Alias -> topic the client told us.
    pub(super) inbound: HashMap<u16, String>,
}

impl Session {
    /// Applies a client's topic alias to its PUBLISH: an empty topic takes the topic the
    /// alias stands for, a topic (re)defines it. `maximum` is the Topic Alias Maximum we
    /// told the client.
    pub(super) fn resolve_inbound_alias(
        &mut self,
        alias: u16,
        publish: &mut Publish,
        maximum: u16,
    ) -> Result<(), Violation> {
        // [MQTT-3.3.2-8] [MQTT-3.3.2-9] 0 and values above our maximum are invalid.
        if alias == 0 || alias > maximum {
            return Err(violation(
                ReasonCode::TOPIC_ALIAS_INVALID,
                "topic alias out of range",
            ));
        }
        if publish.topic.is_empty() {
            let known = self.rare.as_ref().and_then(|r| r.aliases.as_ref());
            match known.and_then(|a| a.inbound.get(&alias)) {
                Some(topic) => publish.topic = topic.clone(),
                None => {
                    return Err(violation(ReasonCode::PROTOCOL_ERROR, "unknown topic alias"));
                }
            }
        } else {
            self.rare_mut()
                .aliases
                .get_or_insert_default()
                .inbound
                .insert(alias, publish.topic.clone());
        }
        Ok(())
    }

    /// The topic and alias to send: an alias the client knows (empty topic), a new alias
    /// with the topic, or the topic alone once the client's Topic Alias Maximum is used up.
    pub(super) fn outbound_alias<'t>(&mut self, topic: &'t str) -> (&'t str, Option<u16>) {
        let maximum = usize::from(self.client_topic_alias_maximum);
        if maximum == 0 {
            return (topic, None);
        }
        let outbound = &mut self.rare_mut().aliases.get_or_insert_default().outbound;
        if let Some(&alias) = outbound.get(topic) {
            return ("", Some(alias));
        }
        let next = outbound.len() + 1;
        if next > maximum {
            return (topic, None);
        }
        let alias = next as u16;
        outbound.insert(topic.to_owned(), alias);
        (topic, Some(alias))
    }
}
