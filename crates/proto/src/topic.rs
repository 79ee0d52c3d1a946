//! Topic names, topic filters, shared subscriptions and matching (spec 4.7, 4.8.2).

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters are at least one character [MQTT-4.7.3-1].
    #[error("topic is empty")]
    Empty,
    /// A UTF-8 string field is at most 65,535 bytes.
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    /// U+0000 is not allowed in UTF-8 strings [MQTT-1.5.4-2].
    #[error("topic contains U+0000")]
    NullCharacter,
    /// Topic names carry no wildcards [MQTT-3.3.2-2].
    #[error("topic name contains a wildcard")]
    WildcardInName,
    /// `#` must be last and alone in its level [MQTT-4.7.1-1].
    #[error("'#' must be the last level and alone in it")]
    MultiLevelWildcard,
    /// `+` must be alone in its level [MQTT-4.7.1-2].
    #[error("'+' must be alone in its level")]
    SingleLevelWildcard,
    /// `$share/{group}/{filter}` needs a group without `/`, `+`, `#` and a filter
    /// [MQTT-4.8.2-1] [MQTT-4.8.2-2].
    #[error("malformed shared subscription: expected $share/{{group}}/{{filter}}")]
    SharedSubscription,
}

const MAX_LEN: usize = 65_535;

fn common_checks(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_LEN {
        return Err(TopicError::TooLong);
    }
    if topic.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// Checks a topic name for PUBLISH or a will.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    common_checks(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter for SUBSCRIBE or UNSUBSCRIBE, including the `$share/` form.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    common_checks(filter)?;
    match parse_shared(filter)? {
        Some(shared) => validate_plain_filter(shared.filter),
        None => validate_plain_filter(filter),
    }
}

fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    common_checks(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::SingleLevelWildcard);
        }
    }
    Ok(())
}

/// A `$share/{group}/{filter}` subscription, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The share name.
    pub group: &'a str,
    /// The filter the group subscribes to.
    pub filter: &'a str,
}

/// Splits a `$share/` filter. `Ok(None)` for ordinary filters; an error when the prefix is
/// there but the rest is not a group and a filter.
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return if filter == "$share" {
            Err(TopicError::SharedSubscription)
        } else {
            Ok(None)
        };
    };
    let (group, inner) = rest.split_once('/').ok_or(TopicError::SharedSubscription)?;
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Err(TopicError::SharedSubscription);
    }
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

/// Whether a topic name matches a (non-shared) filter. Wildcards at the first level do not
/// match topics starting with `$` [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            // `#` also matches the parent level: `a/#` matches `a` [MQTT-4.7.1-2].
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("a/b/c").is_ok());
        assert!(validate_topic_name("/").is_ok());
        assert!(validate_topic_name("$SYS/x").is_ok());
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(
            validate_topic_name("a/+/c"),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
        assert_eq!(
            validate_topic_name(&"x".repeat(65_536)),
            Err(TopicError::TooLong)
        );
    }

    #[test]
    fn topic_filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "+/+",
            "/+",
            "a/+/c",
            "sport/tennis/#",
            "$SYS/#",
            "+/tennis/#",
        ] {
            assert!(validate_topic_filter(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            validate_topic_filter("a/#/b"),
            Err(TopicError::MultiLevelWildcard)
        );
        assert_eq!(
            validate_topic_filter("a#"),
            Err(TopicError::MultiLevelWildcard)
        );
        assert_eq!(
            validate_topic_filter("sport/tennis#"),
            Err(TopicError::MultiLevelWildcard)
        );
        assert_eq!(
            validate_topic_filter("a+"),
            Err(TopicError::SingleLevelWildcard)
        );
        assert_eq!(
            validate_topic_filter("sport+"),
            Err(TopicError::SingleLevelWildcard)
        );
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
    }

    #[test]
    fn shared_filters() {
        assert_eq!(parse_shared("a/b"), Ok(None));
        assert_eq!(
            parse_shared("$share/g/a/+"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "a/+"
            }))
        );
        assert_eq!(parse_shared("$share/g/#").unwrap().unwrap().filter, "#");
        for bad in [
            "$share",
            "$share/",
            "$share/g",
            "$share/g/",
            "$share//a",
            "$share/g+/a",
            "$share/#/a",
        ] {
            assert_eq!(
                parse_shared(bad),
                Err(TopicError::SharedSubscription),
                "{bad}"
            );
        }
        assert!(validate_topic_filter("$share/g/a/#/b").is_err());
        assert!(validate_topic_filter("$share/g/a/#").is_ok());
        // `$shared/...` is an ordinary filter.
        assert_eq!(parse_shared("$shared/x"), Ok(None));
    }

    #[test]
    fn matching_follows_spec_examples() {
        // Spec 4.7.1.2 and 4.7.1.3 examples.
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("#", "a/b/c"));
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        // [MQTT-4.7.2-1]
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(matches("$SYS/broker/+", "$SYS/broker/uptime"));
    }
}
