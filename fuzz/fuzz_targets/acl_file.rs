//! ACL file text and queries against it. The input is the file, then NUL-separated: a
//! client id, a user name (empty: anonymous), and topic names or filters.
//!
//! Beyond not panicking, the verdicts must agree with each other: a filter judged
//! `Allowed` lets the client read every topic it matches, one judged `Denied` none of them,
//! and for a topic name (a filter without wildcards) the verdict is `Allowed` exactly when
//! the topic may be read.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use midge_broker::auth::{AclFile, FilterVerdict};
use midge_broker::config::AclLeadingTopics;
use midge_proto::topic;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let file = parts.next().unwrap_or_default();
    // Both readings of the `topic` lines before the first `user` line, by the parity of
    // the file's length.
    let leading = if file.len() % 2 == 0 {
        AclLeadingTopics::Anonymous
    } else {
        AclLeadingTopics::Everyone
    };
    let Ok(acl) = AclFile::parse(Path::new("fuzz.acl"), file, leading) else {
        return;
    };
    let client_id = parts.next().unwrap_or("client");
    let username = parts.next().filter(|u| !u.is_empty());
    let queries: Vec<&str> = parts.take(16).collect();
    for &query in &queries {
        if topic::validate_topic_name(query).is_ok() {
            let read = acl.may_read(client_id, username, query);
            let _ = acl.may_publish(client_id, username, query);
            let verdict = acl.subscribe_verdict(client_id, username, query);
            assert_eq!(
                read,
                verdict == FilterVerdict::Allowed,
                "topic {query:?}: may_read {read} but subscribe verdict {verdict:?}"
            );
        }
        if topic::validate_topic_filter(query).is_err() || query.starts_with("$share/") {
            continue;
        }
        let verdict = acl.subscribe_verdict(client_id, username, query);
        for &name in &queries {
            if topic::validate_topic_name(name).is_err() || !topic::matches(query, name) {
                continue;
            }
            let read = acl.may_read(client_id, username, name);
            match verdict {
                FilterVerdict::Allowed => {
                    assert!(
                        read,
                        "filter {query:?} Allowed, but topic {name:?} is not readable"
                    )
                }
                FilterVerdict::Denied => {
                    assert!(
                        !read,
                        "filter {query:?} Denied, but topic {name:?} is readable"
                    )
                }
                FilterVerdict::Partly => {}
            }
        }
    }
});
