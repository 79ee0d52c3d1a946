//! The reversible mapping between MQTT topics and NATS subjects, and from MQTT filters to
//! the NATS subjects a node subscribes to.
//!
//! Each topic level becomes one subject token. Bytes outside `[A-Za-z0-9_-]` are written
//! `=XX` (upper-case hex), `=` included; an empty level is `=` alone, which no other level
//! produces (real escapes are three characters). So `.`, `*`, `>`, spaces, empty levels, a
//! leading `/` and any UTF-8 survive exactly, and the same tokens are valid JetStream KV
//! keys. Topics whose first level starts with `$` live under their own prefix: NATS `*`
//! and `>` then cannot match them from a leading wildcard, as MQTT-4.7.2-1 requires, and a
//! node subscribed to `#` receives no `$` traffic.

use std::fmt::Write as _;

/// Prefix of subjects carrying topics that do not start with `$`.
pub const PLAIN_PREFIX: &str = "mq.m";
/// Prefix of subjects carrying topics whose first level starts with `$`.
pub const DOLLAR_PREFIX: &str = "mq.d";

/// True for topics and filters that never leave the node: `$SYS` and below.
pub fn is_node_local(topic_or_filter: &str) -> bool {
    topic_or_filter
        .strip_prefix("$SYS")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push('=');
        return;
    }
    for &b in level.as_bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "={b:02X}");
        }
    }
}

fn prefix_of(first_level: &str) -> &'static str {
    if first_level.starts_with('$') {
        DOLLAR_PREFIX
    } else {
        PLAIN_PREFIX
    }
}

/// The subject a message on `topic` is published to.
pub fn topic_to_subject(topic: &str) -> String {
    let mut out = String::with_capacity(PLAIN_PREFIX.len() + topic.len() + topic.len() / 2 + 4);
    push_subject(&mut out, topic);
    out
}

/// [`topic_to_subject`], appended to `out`: a caller converting topic after topic reuses
/// one buffer instead of allocating for each.
pub fn push_subject(out: &mut String, topic: &str) {
    out.push_str(prefix_of(topic));
    for level in topic.split('/') {
        out.push('.');
        push_level(out, level);
    }
}

/// Why a subject is not one [`topic_to_subject`] makes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a midge topic subject: {0}")]
pub struct SubjectError(&'static str);

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The topic a subject made by [`topic_to_subject`] carries. Anything else (a foreign
/// prefix, a byte that should have been escaped, a bad escape, a `$` topic under the plain
/// prefix or the reverse, bytes that are not UTF-8) is refused, so decoding is the exact
/// inverse of encoding.
pub fn subject_to_topic(subject: &str) -> Result<String, SubjectError> {
    let (prefix, tokens) = if let Some(rest) = subject.strip_prefix("mq.m.") {
        (PLAIN_PREFIX, rest)
    } else if let Some(rest) = subject.strip_prefix("mq.d.") {
        (DOLLAR_PREFIX, rest)
    } else {
        return Err(SubjectError("unknown prefix"));
    };
    let mut bytes = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.split('.').enumerate() {
        if i > 0 {
            bytes.push(b'/');
        }
        if token == "=" {
            continue;
        }
        if token.is_empty() {
            return Err(SubjectError("empty token"));
        }
        let mut t = token.as_bytes();
        while let Some((&b, rest)) = t.split_first() {
            if is_plain(b) {
                bytes.push(b);
                t = rest;
            } else if b == b'=' {
                match rest {
                    [h, l, tail @ ..] => {
                        let (Some(h), Some(l)) = (hex(*h), hex(*l)) else {
                            return Err(SubjectError("bad escape"));
                        };
                        let v = h << 4 | l;
                        if is_plain(v) {
                            return Err(SubjectError("escaped plain byte"));
                        }
                        // Levels never hold '/': decoding it would merge tokens into
                        // one level's worth of levels, a second subject for one topic
                        // (found by the topic_subject fuzz target).
                        if v == b'/' {
                            return Err(SubjectError("escaped level separator"));
                        }
                        bytes.push(v);
                        t = tail;
                    }
                    _ => return Err(SubjectError("short escape")),
                }
            } else {
                return Err(SubjectError("unescaped byte"));
            }
        }
    }
    let topic = String::from_utf8(bytes).map_err(|_| SubjectError("not UTF-8"))?;
    if prefix_of(&topic) != prefix {
        return Err(SubjectError("prefix does not fit the topic"));
    }
    Ok(topic)
}

/// The NATS subjects whose messages a node with a subscription to `filter` (a valid MQTT
/// filter, `$share/{group}/` already removed) must receive: one, or two for a trailing
/// `#`, which in MQTT also matches its parent level (`a/#` matches `a`) while NATS `>`
/// needs at least one more token. None for `$SYS` filters, which stay on the node.
///
/// A filter whose first level is a wildcard listens under the plain prefix only, so it
/// never receives `$` topics ([MQTT-4.7.2-1]); a filter whose first level starts with `$`
/// listens under the `$` prefix.
pub fn filter_to_subjects(filter: &str) -> Vec<String> {
    if is_node_local(filter) {
        return Vec::new();
    }
    let mut subject = String::with_capacity(PLAIN_PREFIX.len() + filter.len() * 2 + 4);
    subject.push_str(prefix_of(filter));
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" if levels.peek().is_none() => {
                let parent = subject.clone();
                subject.push_str(".>");
                // `#` alone has no parent level: every topic has at least one level, which
                // `>` covers.
                if parent.len() == PLAIN_PREFIX.len() {
                    return vec![subject];
                }
                return vec![parent, subject];
            }
            "+" => subject.push_str(".*"),
            level => {
                subject.push('.');
                push_level(&mut subject, level);
            }
        }
    }
    vec![subject]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tricky_topics_encode_to_safe_tokens_and_back() {
        for (topic, subject) in [
            ("a/b", "mq.m.a.b"),
            ("a.b/c", "mq.m.a=2Eb.c"),
            ("/", "mq.m.=.="),
            ("/a//b/", "mq.m.=.a.=.b.="),
            ("sp ace/*/>", "mq.m.sp=20ace.=2A.=3E"),
            ("=", "mq.m.=3D"),
            ("$SYS/x", "mq.d.=24SYS.x"),
            ("$share", "mq.d.=24share"),
            ("é", "mq.m.=C3=A9"),
            ("", "mq.m.="),
        ] {
            assert_eq!(topic_to_subject(topic), subject, "{topic}");
            assert_eq!(subject_to_topic(subject).as_deref(), Ok(topic), "{subject}");
        }
    }

    #[test]
    fn foreign_or_malformed_subjects_are_refused() {
        for bad in [
            "mq.x.a",
            "mq.m.",
            "mq.m.a..b",
            "mq.m.a b",
            "mq.m.=2",
            "mq.m.=zz",
            "mq.m.=41",
            "mq.m.=2a",
            "mq.m.=FF",
            "mq.m.a=2Fb.c",
            "mq.m.=2F",
            "mq.m.=24x",
            "mq.d.x",
            "mq.m.*",
            "mq.m.>",
            "other",
        ] {
            assert!(subject_to_topic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters_map_wildcards_and_keep_the_parent_of_hash() {
        let cases: &[(&str, &[&str])] = &[
            ("a/b", &["mq.m.a.b"]),
            ("a/+", &["mq.m.a.*"]),
            ("+/b", &["mq.m.*.b"]),
            ("a/#", &["mq.m.a", "mq.m.a.>"]),
            ("#", &["mq.m.>"]),
            ("+/#", &["mq.m.*", "mq.m.*.>"]),
            ("$foo/#", &["mq.d.=24foo", "mq.d.=24foo.>"]),
            ("$foo/+", &["mq.d.=24foo.*"]),
            ("/#", &["mq.m.=", "mq.m.=.>"]),
            ("a+b/c#", &["mq.m.a=2Bb.c=23"]),
            ("$SYS/#", &[]),
            ("$SYS", &[]),
        ];
        for (filter, subjects) in cases {
            assert_eq!(filter_to_subjects(filter), *subjects, "{filter}");
        }
        assert!(!is_node_local("$SYSTEM/x"));
        assert_eq!(filter_to_subjects("$SYSTEM/x"), ["mq.d.=24SYSTEM.x"]);
    }

    /// Whether NATS would deliver a message on `subject` to a subscription on `pattern`.
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

    /// MQTT matching (section 4.7), written from the spec for this test.
    fn mqtt_matches(filter: &str, topic: &str) -> bool {
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        for (i, level) in f.iter().enumerate() {
            match *level {
                "#" => return true,
                "+" if i < t.len() => {}
                l if i < t.len() && t[i] == l => {}
                _ => return false,
            }
        }
        f.len() == t.len()
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just(".".to_owned()),
            Just("*".to_owned()),
            Just(">".to_owned()),
            Just("$x".to_owned()),
            Just("a b".to_owned()),
            Just("=".to_owned()),
            "[a-c]{1,2}",
            "\\PC{0,4}".prop_map(|s: String| s.replace(['/', '+', '#'], "")),
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|levels| levels.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        let level = prop_oneof![level(), Just("+".to_owned())];
        (prop::collection::vec(level, 1..5), any::<bool>()).prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#".to_owned());
            }
            levels.join("/")
        })
    }

    proptest! {
        #[test]
        fn any_topic_round_trips(topic in "\\PC{0,40}") {
            let subject = topic_to_subject(&topic);
            prop_assert!(subject.bytes().all(|b| is_plain(b) || b == b'.' || b == b'='));
            prop_assert_eq!(subject_to_topic(&subject), Ok(topic));
        }

        #[test]
        fn tricky_topics_round_trip(topic in topic()) {
            prop_assert_eq!(subject_to_topic(&topic_to_subject(&topic)), Ok(topic));
        }

        /// NATS delivers what MQTT matching wants: never less, and never a `$` topic to a
        /// leading wildcard. (More is possible only where the two agree anyway.)
        #[test]
        fn filter_subjects_match_exactly_what_mqtt_matches(filter in filter(), topic in topic()) {
            prop_assume!(!is_node_local(&filter) && !is_node_local(&topic));
            let subject = topic_to_subject(&topic);
            let nats = filter_to_subjects(&filter).iter().any(|p| nats_matches(p, &subject));
            prop_assert_eq!(nats, mqtt_matches(&filter, &topic), "{} -> {}", filter, subject);
        }
    }
}
