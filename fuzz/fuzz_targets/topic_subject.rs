//! The cluster's topic <-> NATS subject codec (crates/broker/src/cluster/subject.rs) and
//! message envelope. The input is NUL-separated strings, each tried as a topic, a subject
//! and a filter, and then as an envelope.
//!
//! Beyond not panicking: every topic round-trips exactly; a subject that decodes is exactly
//! the encoding of what it decodes to (decoding is the inverse of encoding, no two subjects
//! for one topic); a filter's subjects deliver to NATS exactly the topics MQTT matching
//! gives it; an envelope that decodes encodes back to one that decodes the same.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use midge_broker::cluster::envelope;
use midge_broker::cluster::subject::{
    filter_to_subjects, is_node_local, subject_to_topic, topic_to_subject,
};
use midge_proto::topic;

/// NATS subject matching: `*` one token, `>` one or more trailing tokens.
fn nats_matches(pattern: &str, subject: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let s: Vec<&str> = subject.split('.').collect();
    for (i, token) in p.iter().enumerate() {
        match *token {
            ">" => return s.len() > i,
            "*" if i < s.len() => {}
            t if i < s.len() && s[i] == t => {}
            _ => return false,
        }
    }
    p.len() == s.len()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parts: Vec<&str> = text.split('\0').take(8).collect();
    for &s in &parts {
        let subject = topic_to_subject(s);
        assert_eq!(subject_to_topic(&subject).as_deref(), Ok(s), "{subject}");
        if let Ok(topic) = subject_to_topic(s) {
            assert_eq!(topic_to_subject(&topic), s, "two subjects for {topic:?}");
        }
    }
    for &filter in &parts {
        if topic::validate_topic_filter(filter).is_err()
            || filter.starts_with("$share/")
            || is_node_local(filter)
        {
            continue;
        }
        let patterns = filter_to_subjects(filter);
        for &name in &parts {
            if topic::validate_topic_name(name).is_err() || is_node_local(name) {
                continue;
            }
            let subject = topic_to_subject(name);
            let nats = patterns.iter().any(|p| nats_matches(p, &subject));
            assert_eq!(
                nats,
                topic::matches(filter, name),
                "{filter} {name} {patterns:?}"
            );
        }
    }
    let bytes = Bytes::copy_from_slice(data);
    if let Ok((origin, message)) = envelope::decode("t".into(), bytes, 1_000) {
        let remaining = message.expires_at.map(|at| at - 1_000);
        let again = envelope::encode(&origin, &message, remaining);
        let (origin2, message2) = envelope::decode("t".into(), again, 1_000).expect("re-decode");
        assert_eq!(origin, origin2);
        assert_eq!(
            (
                message.qos,
                message.retain,
                &message.properties,
                &message.payload,
                &message.origin,
                message.expires_at
            ),
            (
                message2.qos,
                message2.retain,
                &message2.properties,
                &message2.payload,
                &message2.origin,
                message2.expires_at
            )
        );
    }
});
