//! Mosquitto-format ACL files and the topic checks they drive.
//!
//! ```text
//! # `topic` rules before any `user` line apply to anonymous clients only
//! topic read public/#
//! user alice
//! topic readwrite alice/#
//! topic deny alice/secret
//! pattern write devices/%c/status
//! ```
//!
//! A client's rules are, as in Mosquitto: for an anonymous client the `topic` lines before
//! any `user` line (with `acl_leading_topics = "everyone"`, for every client), for a named
//! client those under its own `user` line; and for both, every `pattern` (with `%u` and `%c` replaced by its user name and client id; a
//! pattern with `%u` does not apply to anonymous clients). Deny wins: a matching `deny`
//! rule refuses whatever allow rules say. Without a matching allow rule, access is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use midge_proto::topic;

use super::AuthError;
use crate::config::AclLeadingTopics;

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn allows(self, read: bool) -> bool {
        match self {
            Self::ReadWrite => true,
            Self::Read => read,
            Self::Write => !read,
            Self::Deny => false,
        }
    }
}

/// One level of a rule's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RuleLevel {
    Literal(String),
    Plus,
    Hash,
    /// `%c` in a pattern.
    ClientId,
    /// `%u` in a pattern.
    Username,
}

#[derive(Debug, Clone)]
struct Rule {
    grant: Grant,
    levels: Vec<RuleLevel>,
    uses_username: bool,
}

/// A level as the matchers see it. Names substituted into patterns are always literal,
/// so a client id of `#` or `+` matches only itself, never as a wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level<'a> {
    Literal(&'a str),
    Plus,
    Hash,
}

fn filter_levels(filter: &str) -> impl Iterator<Item = Level<'_>> + Clone {
    filter.split('/').map(|level| match level {
        "+" => Level::Plus,
        "#" => Level::Hash,
        other => Level::Literal(other),
    })
}

impl Rule {
    /// The rule's levels for one client: `%c`/`%u` become the name's levels (a name with
    /// `/` spans several levels, as in Mosquitto's textual substitution).
    fn levels<'a>(
        &'a self,
        client_id: &'a str,
        username: Option<&'a str>,
    ) -> impl Iterator<Item = Level<'a>> + Clone {
        self.levels.iter().flat_map(move |level| {
            let (single, name) = match level {
                RuleLevel::Literal(s) => (Some(Level::Literal(s.as_str())), None),
                RuleLevel::Plus => (Some(Level::Plus), None),
                RuleLevel::Hash => (Some(Level::Hash), None),
                RuleLevel::ClientId => (None, Some(client_id)),
                RuleLevel::Username => (None, Some(username.unwrap_or_default())),
            };
            single.into_iter().chain(
                name.into_iter()
                    .flat_map(|n| n.split('/').map(Level::Literal)),
            )
        })
    }
}

/// True when a wildcard at the first level may not stand for `level` [MQTT-4.7.2-1].
fn is_dollar(level: Level<'_>) -> bool {
    matches!(level, Level::Literal(s) if s.starts_with('$'))
}

/// Whether every topic `filter` matches is matched by `rule` too.
fn covers<'a>(
    mut rule: impl Iterator<Item = Level<'a>>,
    mut filter: impl Iterator<Item = Level<'a>>,
) -> bool {
    let mut first = true;
    loop {
        match (rule.next(), filter.next()) {
            (None, None) => return true,
            // The filter's topics are exactly this prefix: `a/#` matches `a` itself.
            (Some(Level::Hash), None) => return rule.next().is_none(),
            (Some(_), None) | (None, Some(_)) => return false,
            (Some(Level::Hash), Some(f)) => return !(first && is_dollar(f)),
            (Some(Level::Plus), Some(f)) => {
                if f == Level::Hash || (first && is_dollar(f)) {
                    return false;
                }
            }
            (Some(Level::Literal(r)), Some(f)) => {
                if f != Level::Literal(r) {
                    return false;
                }
            }
        }
        first = false;
    }
}

/// Whether every topic `filter` matches is matched by the filter `rule` too (for dynsec's
/// subscribe patterns and receive checks).
pub(crate) fn covers_filter(rule: &str, filter: &str) -> bool {
    covers(filter_levels(rule), filter_levels(filter))
}

/// Whether some topic is matched by both filters.
pub(crate) fn intersects_filter(rule: &str, filter: &str) -> bool {
    intersects(filter_levels(rule), filter_levels(filter))
}

/// Whether some topic is matched by both `rule` and `filter`. For a topic name (no
/// wildcards) this is plain matching.
fn intersects<'a>(
    mut rule: impl Iterator<Item = Level<'a>>,
    mut filter: impl Iterator<Item = Level<'a>>,
) -> bool {
    let mut first = true;
    loop {
        match (rule.next(), filter.next()) {
            (None, None) => return true,
            // One side ends; the other still matches this prefix only through `#`.
            (Some(Level::Hash), None) | (None, Some(Level::Hash)) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
            (Some(a), Some(b)) => {
                let wildcard = |l: Level<'_>| matches!(l, Level::Plus | Level::Hash);
                if first && ((wildcard(a) && is_dollar(b)) || (wildcard(b) && is_dollar(a))) {
                    return false;
                }
                if a == Level::Hash || b == Level::Hash {
                    return true;
                }
                if let (Level::Literal(x), Level::Literal(y)) = (a, b)
                    && x != y
                {
                    return false;
                }
            }
        }
        first = false;
    }
}

/// The verdict on a subscription filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterVerdict {
    /// No topic under the filter may be read.
    Denied,
    /// Every topic under the filter may be read.
    Allowed,
    /// Some topics under the filter may be read and some may not: the subscription is
    /// granted, and each delivery is checked.
    Partly,
}

/// A loaded ACL file.
#[derive(Debug, Default)]
pub struct AclFile {
    path: PathBuf,
    /// Whom `general` applies to.
    leading: AclLeadingTopics,
    /// `topic` lines before the first `user` line.
    general: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl AclFile {
    /// Reads and parses `path`; a bad line is an error naming the file and the line.
    pub fn load(path: &Path, leading: AclLeadingTopics) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, leading)
    }

    /// Parses ACL text; `path` is for error messages.
    pub fn parse(path: &Path, text: &str, leading: AclLeadingTopics) -> Result<Self, AuthError> {
        let mut acl = Self {
            path: path.to_owned(),
            leading,
            ..Self::default()
        };
        let mut user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let bad = |reason: String| AuthError::Line {
                path: path.to_owned(),
                line: index + 1,
                reason,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(bad("`user` needs a user name".into()));
                    }
                    acl.users.entry(rest.to_owned()).or_default();
                    user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let pattern = keyword == "pattern";
                    let (first, after) = split_word(rest);
                    let (grant, filter) = match first {
                        "read" => (Grant::Read, after),
                        "write" => (Grant::Write, after),
                        "readwrite" => (Grant::ReadWrite, after),
                        "deny" => (Grant::Deny, after),
                        // Mosquitto: without an access word the rule is readwrite.
                        _ => (Grant::ReadWrite, rest),
                    };
                    if filter.is_empty() {
                        return Err(bad(format!("`{keyword}` needs a topic filter")));
                    }
                    let rule = parse_rule(grant, filter, pattern).map_err(bad)?;
                    if pattern {
                        acl.patterns.push(rule);
                    } else if let Some(user) = &user {
                        acl.users.entry(user.clone()).or_default().push(rule);
                    } else {
                        acl.general.push(rule);
                    }
                }
                other => {
                    return Err(bad(format!(
                        "unknown keyword `{other}` (expected user, topic or pattern)"
                    )));
                }
            }
        }
        Ok(acl)
    }

    /// Whom the leading `topic` lines apply to.
    pub fn leading(&self) -> AclLeadingTopics {
        self.leading
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        self.general.len() + self.patterns.len() + self.users.values().map(Vec::len).sum::<usize>()
    }

    fn rules<'a>(&'a self, username: Option<&'a str>) -> impl Iterator<Item = &'a Rule> {
        let own = username
            .and_then(|u| self.users.get(u))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let general = if username.is_none() || self.leading == AclLeadingTopics::Everyone {
            self.general.as_slice()
        } else {
            &[]
        };
        general
            .iter()
            .chain(own)
            .chain(self.patterns.iter())
            .filter(move |rule| username.is_some() || !rule.uses_username)
    }

    /// May this client publish to `topic` (a topic name)?
    pub fn may_publish(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.may_access(client_id, username, topic, false)
    }

    /// May this client receive a message published to `topic`?
    pub fn may_read(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.may_access(client_id, username, topic, true)
    }

    fn may_access(&self, client_id: &str, username: Option<&str>, topic: &str, read: bool) -> bool {
        let mut allowed = false;
        for rule in self.rules(username) {
            if intersects(rule.levels(client_id, username), filter_levels(topic)) {
                if rule.grant == Grant::Deny {
                    return false;
                }
                allowed |= rule.grant.allows(read);
            }
        }
        allowed
    }

    /// The verdict on subscribing to `filter` (without any `$share/group/` prefix).
    pub fn subscribe_verdict(
        &self,
        client_id: &str,
        username: Option<&str>,
        filter: &str,
    ) -> FilterVerdict {
        let mut covered = false;
        let mut some_readable = false;
        let mut some_denied = false;
        for rule in self.rules(username) {
            let levels = rule.levels(client_id, username);
            if rule.grant == Grant::Deny {
                if covers(levels.clone(), filter_levels(filter)) {
                    // `topic deny test/nosubscribe` refuses that subscription outright.
                    return FilterVerdict::Denied;
                }
                some_denied |= intersects(levels, filter_levels(filter));
            } else if rule.grant.allows(true) {
                if covers(levels.clone(), filter_levels(filter)) {
                    covered = true;
                    some_readable = true;
                } else {
                    some_readable |= intersects(levels, filter_levels(filter));
                }
            }
        }
        match (some_readable, covered && !some_denied) {
            (false, _) => FilterVerdict::Denied,
            (true, true) => FilterVerdict::Allowed,
            (true, false) => FilterVerdict::Partly,
        }
    }
}

/// Splits off the first space- or tab-separated word; the rest keeps inner spaces (a user
/// name or a topic filter may contain them, as in Mosquitto).
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once([' ', '\t']) {
        Some((word, rest)) => (word, rest.trim_start_matches([' ', '\t'])),
        None => (s, ""),
    }
}

fn parse_rule(grant: Grant, filter: &str, pattern: bool) -> Result<Rule, String> {
    topic::validate_topic_filter(filter)
        .map_err(|e| format!("`{filter}` is not a valid topic filter: {e}"))?;
    let mut uses_username = false;
    let levels = filter
        .split('/')
        .map(|level| {
            Ok(match level {
                "+" => RuleLevel::Plus,
                "#" => RuleLevel::Hash,
                "%c" if pattern => RuleLevel::ClientId,
                "%u" if pattern => {
                    uses_username = true;
                    RuleLevel::Username
                }
                other if pattern && (other.contains("%c") || other.contains("%u")) => {
                    return Err(format!(
                        "in `{filter}`, %c and %u must be a whole topic level"
                    ));
                }
                other => RuleLevel::Literal(other.to_owned()),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Rule {
        grant,
        levels,
        uses_username,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(text: &str) -> AclFile {
        AclFile::parse(Path::new("acl"), text, AclLeadingTopics::Anonymous).unwrap()
    }

    fn covers_str(rule: &str, filter: &str) -> bool {
        covers(filter_levels(rule), filter_levels(filter))
    }

    fn intersects_str(rule: &str, filter: &str) -> bool {
        intersects(filter_levels(rule), filter_levels(filter))
    }

    #[test]
    fn covering_follows_wildcards_and_dollar_topics() {
        assert!(covers_str("#", "a/b"));
        assert!(covers_str("a/#", "a"));
        assert!(covers_str("a/#", "a/+/c"));
        assert!(covers_str("a/+", "a/+"));
        assert!(covers_str("a/+", "a/b"));
        assert!(!covers_str("a/+", "a/#"));
        assert!(!covers_str("a/b", "a/+"));
        assert!(!covers_str("a", "a/#"));
        assert!(!covers_str("#", "$SYS/#"));
        assert!(!covers_str("+/x", "$SYS/x"));
        assert!(covers_str("$SYS/#", "$SYS/broker/+"));
    }

    #[test]
    fn intersecting_follows_wildcards_and_dollar_topics() {
        assert!(intersects_str("a/b", "a/+"));
        assert!(intersects_str("a/+/c", "a/b/#"));
        assert!(intersects_str("a/#", "a"));
        assert!(intersects_str("a", "a/#"));
        assert!(!intersects_str("a/b", "a/c"));
        assert!(!intersects_str("a/b", "a"));
        assert!(!intersects_str("#", "$SYS/x"));
        assert!(!intersects_str("$SYS/x", "+/x"));
        assert!(intersects_str("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn publish_needs_a_write_rule_and_deny_wins() {
        let acl = acl("topic write out/#\ntopic read in/#\ntopic deny out/secret\n");
        assert!(acl.may_publish("c", None, "out/x"));
        assert!(!acl.may_publish("c", None, "in/x"));
        assert!(!acl.may_publish("c", None, "out/secret"));
        assert!(!acl.may_publish("c", None, "elsewhere"));
        assert!(acl.may_read("c", None, "in/x"));
        assert!(!acl.may_read("c", None, "out/x"));
    }

    #[test]
    fn leading_topics_are_for_anonymous_clients_and_patterns_for_everyone() {
        let text = "topic read public/#\npattern read news/#\nuser alice\ntopic alice/#\n";
        let acl = acl(text);
        assert!(acl.may_read("c", None, "public/x"));
        assert!(!acl.may_read("c", Some("alice"), "public/x"));
        assert!(!acl.may_read("c", Some("mallory"), "public/x"));
        for user in [None, Some("alice"), Some("mallory")] {
            assert!(acl.may_read("c", user, "news/x"));
        }
        let old = AclFile::parse(Path::new("acl"), text, AclLeadingTopics::Everyone).unwrap();
        assert!(old.may_read("c", Some("alice"), "public/x"));
        assert!(old.may_publish("c", Some("alice"), "alice/x"));
    }

    #[test]
    fn user_sections_replace_the_leading_rules() {
        let acl = acl(
            "topic read public/#\nuser alice\ntopic readwrite alice/#\nuser bob\ntopic bob/#\n",
        );
        assert!(!acl.may_read("c", Some("alice"), "public/x"));
        assert!(acl.may_publish("c", Some("alice"), "alice/x"));
        assert!(!acl.may_publish("c", Some("alice"), "bob/x"));
        assert!(acl.may_publish("c", Some("bob"), "bob/x"));
        assert!(acl.may_read("c", None, "public/x"));
        assert!(!acl.may_read("c", None, "alice/x"));
        assert!(!acl.may_read("c", Some("mallory"), "alice/x"));
    }

    #[test]
    fn patterns_substitute_client_id_and_user_name() {
        let acl = acl("user alice\npattern readwrite devices/%c/#\npattern read users/%u/+\n");
        assert!(acl.may_publish("d1", None, "devices/d1/temp"));
        assert!(!acl.may_publish("d1", None, "devices/d2/temp"));
        assert!(acl.may_read("d1", Some("alice"), "users/alice/inbox"));
        assert!(!acl.may_read("d1", Some("alice"), "users/bob/inbox"));
        // %u does not apply to anonymous clients.
        assert!(!acl.may_read("d1", None, "users//inbox"));
        // A client id with wildcards or slashes gains nothing.
        assert!(!acl.may_publish("#", None, "devices/d2/temp"));
        assert_eq!(
            acl.subscribe_verdict("+", None, "devices/+/temp"),
            FilterVerdict::Partly
        );
        assert!(acl.may_publish("a/b", None, "devices/a/b/x"));
        assert!(!acl.may_publish("a/b", None, "devices/a/c"));
    }

    #[test]
    fn subscribe_verdicts() {
        let acl = acl("topic read #\ntopic deny test/nosubscribe\ntopic read only/this\n");
        assert_eq!(
            acl.subscribe_verdict("c", None, "x/y"),
            FilterVerdict::Allowed
        );
        assert_eq!(
            acl.subscribe_verdict("c", None, "test/nosubscribe"),
            FilterVerdict::Denied
        );
        assert_eq!(
            acl.subscribe_verdict("c", None, "test/#"),
            FilterVerdict::Partly
        );
        assert_eq!(
            acl.subscribe_verdict("c", None, "$SYS/#"),
            FilterVerdict::Denied
        );
        let narrow = self::acl("topic read a/b\ntopic write a/c\n");
        assert_eq!(
            narrow.subscribe_verdict("c", None, "a/+"),
            FilterVerdict::Partly
        );
        assert_eq!(
            narrow.subscribe_verdict("c", None, "a/c"),
            FilterVerdict::Denied
        );
        assert_eq!(
            narrow.subscribe_verdict("c", None, "a/b"),
            FilterVerdict::Allowed
        );
    }

    #[test]
    fn rule_syntax_follows_mosquitto() {
        let acl = acl("# comment\n\n  topic   a b/c  \nuser  name with space\ntopic deny x\n");
        // Without an access word the rule is readwrite; the filter keeps its spaces.
        assert!(acl.may_publish("c", None, "a b/c"));
        assert!(acl.users.contains_key("name with space"));
        assert_eq!(acl.rule_count(), 2);
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        for (text, expect) in [
            ("topic read a/#/b\n", "not a valid topic filter"),
            ("\ntopc read a\n", "line 2"),
            ("user\n", "needs a user name"),
            ("topic read\n", "needs a topic filter"),
            ("pattern read dev_%c/x\n", "whole topic level"),
        ] {
            let message = AclFile::parse(Path::new("acl"), text, AclLeadingTopics::Anonymous)
                .unwrap_err()
                .to_string();
            assert!(message.starts_with("acl:"), "{message}");
            assert!(message.contains(expect), "{text}: {message}");
        }
    }
}
