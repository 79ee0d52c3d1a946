//! The dynamic-security state: clients, groups, roles and their ACLs, in memory and in
//! Mosquitto's dynamic-security plugin JSON file format, and how ACLs are evaluated.
//!
//! Evaluation (Mosquitto's): a client's roles in priority order (higher first), then its
//! groups in priority order, each group's roles in priority order; an anonymous client
//! has the anonymous group's roles. Within a role only the ACLs of the type being checked
//! count, in priority order; the first whose topic matches decides (allow or deny).
//! When none matches, `defaultACLAccess` decides.

use std::collections::{BTreeMap, HashMap};

use base64ct::{Base64, Encoding};
use serde_json::{Map, Value, json};
use sha2::Sha512;
use subtle::ConstantTimeEq;

use crate::auth::acl::{FilterVerdict, covers_filter, intersects_filter};

/// Length of a PBKDF2-SHA512 output, as the plugin stores it.
const HASH_LEN: usize = 64;
/// Salt length the plugin uses (12 bytes: 16 base64 characters).
const SALT_LEN: usize = 12;

/// The ACL types of a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclType {
    /// A client publishing (to the broker).
    PublishClientSend,
    /// The broker delivering a message to a client.
    PublishClientReceive,
    /// A subscription filter compared as a string.
    SubscribeLiteral,
    /// A subscription filter that the ACL's filter must cover.
    SubscribePattern,
    /// An unsubscription compared as a string.
    UnsubscribeLiteral,
    /// An unsubscription the ACL's filter must cover.
    UnsubscribePattern,
}

impl AclType {
    pub(crate) const ALL: [AclType; 6] = [
        AclType::PublishClientSend,
        AclType::PublishClientReceive,
        AclType::SubscribeLiteral,
        AclType::SubscribePattern,
        AclType::UnsubscribeLiteral,
        AclType::UnsubscribePattern,
    ];

    /// The plugin's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::PublishClientSend => "publishClientSend",
            Self::PublishClientReceive => "publishClientReceive",
            Self::SubscribeLiteral => "subscribeLiteral",
            Self::SubscribePattern => "subscribePattern",
            Self::UnsubscribeLiteral => "unsubscribeLiteral",
            Self::UnsubscribePattern => "unsubscribePattern",
        }
    }

    /// Parses a type name; the plugin compares them without regard to case.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One ACL of a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    /// Topic filter.
    pub topic: String,
    /// Higher is evaluated first.
    pub priority: i64,
    /// Allow or deny.
    pub allow: bool,
}

/// A role: ACLs by type, each list in evaluation order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Role {
    /// Free text: a display name.
    pub textname: Option<String>,
    /// Free text: a description.
    pub textdescription: Option<String>,
    /// By [`AclType`], each in evaluation order.
    pub acls: [Vec<Acl>; 6],
}

impl Role {
    /// Adds an ACL in priority order (after others of the same priority). `false` if the
    /// role already has an ACL of this type for this topic.
    pub fn add_acl(&mut self, kind: AclType, acl: Acl) -> bool {
        let list = &mut self.acls[kind.index()];
        if list.iter().any(|a| a.topic == acl.topic) {
            return false;
        }
        let at = list
            .iter()
            .position(|a| a.priority < acl.priority)
            .unwrap_or(list.len());
        list.insert(at, acl);
        true
    }

    /// Removes the ACL of this type for `topic`; `false` if there is none.
    pub fn remove_acl(&mut self, kind: AclType, topic: &str) -> bool {
        let list = &mut self.acls[kind.index()];
        let before = list.len();
        list.retain(|a| a.topic != topic);
        list.len() != before
    }

    /// The ACLs of one type, in evaluation order.
    pub fn acls_of(&self, kind: AclType) -> &[Acl] {
        &self.acls[kind.index()]
    }
}

/// A role or group named in a client's or group's list, with its priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The role's or group's name.
    pub name: String,
    /// Higher is evaluated first.
    pub priority: i64,
}

/// Inserts keeping higher priorities first; `false` if `name` is already there.
pub fn insert_member(list: &mut Vec<Member>, name: &str, priority: i64) -> bool {
    if list.iter().any(|m| m.name == name) {
        return false;
    }
    let at = list
        .iter()
        .position(|m| m.priority < priority)
        .unwrap_or(list.len());
    list.insert(
        at,
        Member {
            name: name.to_owned(),
            priority,
        },
    );
    true
}

/// Removes `name`; `false` if it was not there.
pub fn remove_member(list: &mut Vec<Member>, name: &str) -> bool {
    let before = list.len();
    list.retain(|m| m.name != name);
    list.len() != before
}

/// A PBKDF2-HMAC-SHA512 password hash as the plugin stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct Hashed {
    /// The 64-byte PBKDF2 output.
    pub hash: Vec<u8>,
    /// The salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
}

impl std::fmt::Debug for Hashed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hashed")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Hashed {
    /// Hashes `password` with a fresh random salt.
    pub fn new(password: &[u8], iterations: u32) -> Result<Self, String> {
        let mut salt = vec![0u8; SALT_LEN];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut salt)
            .map_err(|_| "no randomness for a salt".to_owned())?;
        let hash = pbkdf2(password, &salt, iterations);
        Ok(Self {
            hash,
            salt,
            iterations,
        })
    }

    /// Checks `password` (CPU-heavy: callers run it off the async workers).
    pub fn verify(&self, password: &[u8]) -> bool {
        let computed = pbkdf2(password, &self.salt, self.iterations);
        bool::from(computed.ct_eq(&self.hash))
    }
}

fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
    out
}

/// One dynsec client (a user name that may log in).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Client {
    /// When set, only a connection with this client id may log in as this user.
    pub clientid: Option<String>,
    /// `None`: nobody can log in as this client.
    pub password: Option<Hashed>,
    /// Free text: a display name.
    pub textname: Option<String>,
    /// Free text: a description.
    pub textdescription: Option<String>,
    /// A disabled client cannot log in.
    pub disabled: bool,
    /// Roles, higher priority first.
    pub roles: Vec<Member>,
    /// Groups, higher priority first.
    pub groups: Vec<Member>,
}

/// A group of clients sharing roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    /// Free text: a display name.
    pub textname: Option<String>,
    /// Free text: a description.
    pub textdescription: Option<String>,
    /// Roles, higher priority first.
    pub roles: Vec<Member>,
}

/// `defaultACLAccess`: what applies when no ACL matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultAccess {
    /// `publishClientSend`.
    pub publish_client_send: bool,
    /// `publishClientReceive`.
    pub publish_client_receive: bool,
    /// `subscribe`.
    pub subscribe: bool,
    /// `unsubscribe`.
    pub unsubscribe: bool,
}

impl Default for DefaultAccess {
    /// The plugin's defaults.
    fn default() -> Self {
        Self {
            publish_client_send: false,
            publish_client_receive: true,
            subscribe: false,
            unsubscribe: true,
        }
    }
}

impl DefaultAccess {
    /// The names `setDefaultACLAccess` takes.
    pub const NAMES: [&'static str; 4] = [
        "publishClientSend",
        "publishClientReceive",
        "subscribe",
        "unsubscribe",
    ];

    /// The default for a name of [`DefaultAccess::NAMES`].
    pub fn get(&self, name: &str) -> Option<bool> {
        Some(match name {
            "publishClientSend" => self.publish_client_send,
            "publishClientReceive" => self.publish_client_receive,
            "subscribe" => self.subscribe,
            "unsubscribe" => self.unsubscribe,
            _ => return None,
        })
    }

    /// Sets the default for a name; `false` if the name is unknown.
    pub fn set(&mut self, name: &str, allow: bool) -> bool {
        let slot = match name {
            "publishClientSend" => &mut self.publish_client_send,
            "publishClientReceive" => &mut self.publish_client_receive,
            "subscribe" => &mut self.subscribe,
            "unsubscribe" => &mut self.unsubscribe,
            _ => return false,
        };
        *slot = allow;
        true
    }

    fn for_type(&self, kind: AclType) -> bool {
        match kind {
            AclType::PublishClientSend => self.publish_client_send,
            AclType::PublishClientReceive => self.publish_client_receive,
            AclType::SubscribeLiteral | AclType::SubscribePattern => self.subscribe,
            AclType::UnsubscribeLiteral | AclType::UnsubscribePattern => self.unsubscribe,
        }
    }
}

/// The whole state; cloned, changed and swapped in by commands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Clients by user name.
    pub clients: BTreeMap<String, Client>,
    /// Groups by name.
    pub groups: BTreeMap<String, Group>,
    /// Roles by name.
    pub roles: BTreeMap<String, Role>,
    /// `defaultACLAccess`.
    pub default_access: DefaultAccess,
    /// `anonymousGroup`: the group whose roles apply to anonymous clients.
    pub anonymous_group: Option<String>,
    /// User names deleted since start, with when (wall-clock ms): connections made
    /// before then are closed (not in the file).
    pub deleted: HashMap<String, u64>,
}

/// What is wrong with a dynamic-security file.
pub type FormatError = String;

fn opt_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, FormatError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{key}` is not a string")),
    }
}

fn opt_int(obj: &Map<String, Value>, key: &str, default: i64) -> Result<i64, FormatError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| format!("`{key}` is not an integer")),
    }
}

fn array<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], FormatError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(format!("`{key}` is not an array")),
    }
}

fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, FormatError> {
    value
        .as_object()
        .ok_or_else(|| format!("{what} is not a JSON object"))
}

/// Reads a `roles` or `groups` list of `{name_key, priority}` objects.
pub fn members(
    obj: &Map<String, Value>,
    key: &str,
    name_key: &str,
) -> Result<Vec<Member>, FormatError> {
    let mut list = Vec::new();
    for item in array(obj, key)? {
        let item = object(item, &format!("an entry of `{key}`"))?;
        let name = opt_string(item, name_key)?
            .ok_or_else(|| format!("an entry of `{key}` has no `{name_key}`"))?;
        insert_member(&mut list, &name, opt_int(item, "priority", -1)?);
    }
    Ok(list)
}

/// Reads one ACL object; `default_priority` where it names none.
pub fn parse_acl(
    obj: &Map<String, Value>,
    default_priority: i64,
) -> Result<(AclType, Acl), FormatError> {
    let kind = opt_string(obj, "acltype")?
        .and_then(|t| AclType::parse(&t))
        .ok_or("Invalid/missing acltype")?;
    let topic = opt_string(obj, "topic")?.ok_or("Invalid/missing topic")?;
    if midge_proto::topic::validate_topic_filter(&topic).is_err() {
        return Err("Invalid ACL topic".into());
    }
    let allow = match obj.get("allow") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("Invalid allow".into()),
    };
    Ok((
        kind,
        Acl {
            topic,
            priority: opt_int(obj, "priority", default_priority)?,
            allow,
        },
    ))
}

impl State {
    /// Parses the plugin's JSON file. References to roles or groups that the file does not
    /// define are dropped (as the plugin does).
    pub fn from_json(text: &str) -> Result<Self, FormatError> {
        let root: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let root = object(&root, "the file")?;
        let mut state = State::default();
        for role in array(root, "roles")? {
            let role = object(role, "a role")?;
            let name = opt_string(role, "rolename")?.ok_or("a role has no `rolename`")?;
            let mut parsed = Role {
                textname: opt_string(role, "textname")?,
                textdescription: opt_string(role, "textdescription")?,
                ..Role::default()
            };
            for acl in array(role, "acls")? {
                let acl = object(acl, "an ACL")?;
                let (kind, acl) = parse_acl(acl, 0).map_err(|e| format!("role {name:?}: {e}"))?;
                parsed.add_acl(kind, acl);
            }
            if state.roles.insert(name.clone(), parsed).is_some() {
                return Err(format!("role {name:?} is defined twice"));
            }
        }
        for group in array(root, "groups")? {
            let group = object(group, "a group")?;
            let name = opt_string(group, "groupname")?.ok_or("a group has no `groupname`")?;
            let mut roles = members(group, "roles", "rolename")?;
            roles.retain(|m| state.roles.contains_key(&m.name));
            let parsed = Group {
                textname: opt_string(group, "textname")?,
                textdescription: opt_string(group, "textdescription")?,
                roles,
            };
            if state.groups.insert(name.clone(), parsed).is_some() {
                return Err(format!("group {name:?} is defined twice"));
            }
        }
        for client in array(root, "clients")? {
            let client = object(client, "a client")?;
            let name = opt_string(client, "username")?.ok_or("a client has no `username`")?;
            let what = |e: String| format!("client {name:?}: {e}");
            let password = match (
                opt_string(client, "password").map_err(what)?,
                opt_string(client, "salt").map_err(what)?,
            ) {
                (Some(hash), Some(salt)) => {
                    let hash = Base64::decode_vec(&hash)
                        .map_err(|_| what("the password is not base64".into()))?;
                    let salt = Base64::decode_vec(&salt)
                        .map_err(|_| what("the salt is not base64".into()))?;
                    let iterations = opt_int(client, "iterations", 0).map_err(what)?;
                    let iterations = u32::try_from(iterations)
                        .ok()
                        .filter(|i| *i > 0)
                        .ok_or_else(|| what("`iterations` must be a positive integer".into()))?;
                    if hash.len() != HASH_LEN {
                        return Err(what(format!(
                            "the password is not {HASH_LEN} bytes of PBKDF2-SHA512"
                        )));
                    }
                    Some(Hashed {
                        hash,
                        salt,
                        iterations,
                    })
                }
                (None, _) => None,
                (Some(_), None) => return Err(what("a password without a salt".into())),
            };
            let mut roles = members(client, "roles", "rolename").map_err(what)?;
            roles.retain(|m| state.roles.contains_key(&m.name));
            let mut groups = members(client, "groups", "groupname").map_err(what)?;
            groups.retain(|m| state.groups.contains_key(&m.name));
            let parsed = Client {
                clientid: opt_string(client, "clientid").map_err(what)?,
                password,
                // `mosquitto_ctrl dynsec init` writes `textName`.
                textname: match opt_string(client, "textname").map_err(what)? {
                    Some(t) => Some(t),
                    None => opt_string(client, "textName").map_err(what)?,
                },
                textdescription: opt_string(client, "textdescription").map_err(what)?,
                disabled: client
                    .get("disabled")
                    .map(|d| {
                        d.as_bool()
                            .ok_or_else(|| what("`disabled` is not a boolean".into()))
                    })
                    .transpose()?
                    .unwrap_or(false),
                roles,
                groups,
            };
            if state.clients.insert(name.clone(), parsed).is_some() {
                return Err(format!("client {name:?} is defined twice"));
            }
        }
        // The plugin keeps group membership with the group in its file.
        for group in array(root, "groups")? {
            let group = object(group, "a group")?;
            let name = opt_string(group, "groupname")?.unwrap_or_default();
            for member in members(group, "clients", "username")? {
                if let Some(client) = state.clients.get_mut(&member.name) {
                    insert_member(&mut client.groups, &name, member.priority);
                }
            }
        }
        if let Some(access) = root.get("defaultACLAccess") {
            let access = object(access, "`defaultACLAccess`")?;
            for (key, value) in access {
                let allow = value
                    .as_bool()
                    .ok_or_else(|| format!("defaultACLAccess `{key}` is not a boolean"))?;
                state.default_access.set(key, allow);
            }
        }
        state.anonymous_group =
            opt_string(root, "anonymousGroup")?.filter(|g| state.groups.contains_key(g));
        Ok(state)
    }

    /// The plugin's JSON file format.
    pub fn to_json(&self) -> Value {
        let clients: Vec<Value> = self
            .clients
            .iter()
            .map(|(name, c)| {
                let mut obj = Map::new();
                obj.insert("username".into(), json!(name));
                put_opt(&mut obj, "textname", &c.textname);
                put_opt(&mut obj, "textdescription", &c.textdescription);
                put_opt(&mut obj, "clientid", &c.clientid);
                if let Some(p) = &c.password {
                    obj.insert("password".into(), json!(Base64::encode_string(&p.hash)));
                    obj.insert("salt".into(), json!(Base64::encode_string(&p.salt)));
                    obj.insert("iterations".into(), json!(p.iterations));
                }
                if c.disabled {
                    obj.insert("disabled".into(), json!(true));
                }
                obj.insert("roles".into(), member_list(&c.roles, "rolename"));
                Value::Object(obj)
            })
            .collect();
        let groups: Vec<Value> = self
            .groups
            .iter()
            .map(|(name, g)| {
                let mut obj = self.group_json(name, g);
                obj.insert("clients".into(), self.group_clients(name));
                Value::Object(obj)
            })
            .collect();
        let roles: Vec<Value> = self
            .roles
            .iter()
            .map(|(name, r)| Value::Object(role_json(name, r)))
            .collect();
        let d = &self.default_access;
        let mut root = Map::new();
        root.insert("clients".into(), Value::Array(clients));
        root.insert("groups".into(), Value::Array(groups));
        root.insert("roles".into(), Value::Array(roles));
        root.insert(
            "defaultACLAccess".into(),
            json!({
                "publishClientSend": d.publish_client_send,
                "publishClientReceive": d.publish_client_receive,
                "subscribe": d.subscribe,
                "unsubscribe": d.unsubscribe,
            }),
        );
        if let Some(g) = &self.anonymous_group {
            root.insert("anonymousGroup".into(), json!(g));
        }
        Value::Object(root)
    }

    /// A group as `getGroup` and the file show it, without its clients.
    pub fn group_json(&self, name: &str, g: &Group) -> Map<String, Value> {
        let mut obj = Map::new();
        obj.insert("groupname".into(), json!(name));
        put_opt(&mut obj, "textname", &g.textname);
        put_opt(&mut obj, "textdescription", &g.textdescription);
        obj.insert("roles".into(), member_list(&g.roles, "rolename"));
        obj
    }

    /// The clients of a group, as `[{"username", "priority"}]`.
    pub fn group_clients(&self, group: &str) -> Value {
        let members: Vec<Member> = self
            .clients
            .iter()
            .filter_map(|(user, c)| {
                c.groups.iter().find(|m| m.name == group).map(|m| Member {
                    name: user.clone(),
                    priority: m.priority,
                })
            })
            .collect();
        member_list(&members, "username")
    }

    /// A client as `getClient` shows it (no password).
    pub fn client_json(&self, name: &str, c: &Client) -> Value {
        let mut obj = Map::new();
        obj.insert("username".into(), json!(name));
        put_opt(&mut obj, "clientid", &c.clientid);
        put_opt(&mut obj, "textname", &c.textname);
        put_opt(&mut obj, "textdescription", &c.textdescription);
        if c.disabled {
            obj.insert("disabled".into(), json!(true));
        }
        obj.insert("roles".into(), member_list(&c.roles, "rolename"));
        obj.insert("groups".into(), member_list(&c.groups, "groupname"));
        Value::Object(obj)
    }

    /// The iteration count that most clients' hashes use (the configured one when no
    /// client has a password): the decoy check for an unknown user costs that much.
    pub fn usual_iterations(&self, configured: u32) -> u32 {
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for p in self.clients.values().filter_map(|c| c.password.as_ref()) {
            *counts.entry(p.iterations).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map_or(configured, |(i, _)| i)
    }

    /// The roles that apply to `username` (`None`: anonymous), in evaluation order.
    fn roles_for<'a>(&'a self, username: Option<&str>) -> Vec<&'a Role> {
        let role = |m: &Member| self.roles.get(&m.name);
        let group_roles = |g: &str| {
            self.groups
                .get(g)
                .into_iter()
                .flat_map(|g| g.roles.iter().filter_map(role))
        };
        match username {
            Some(user) => match self.clients.get(user) {
                Some(c) => c
                    .roles
                    .iter()
                    .filter_map(role)
                    .chain(c.groups.iter().flat_map(|g| group_roles(&g.name)))
                    .collect(),
                None => Vec::new(),
            },
            None => self
                .anonymous_group
                .iter()
                .flat_map(|g| group_roles(g))
                .collect(),
        }
    }

    /// Whether `username` may do `kind` with `topic` (a topic name for the publish types,
    /// a filter for the others).
    pub fn allows(&self, username: Option<&str>, kind: AclType, topic: &str) -> bool {
        let roles = self.roles_for(username);
        let kinds: &[AclType] = match kind {
            // A subscription is checked against both subscribe types, as the plugin does.
            AclType::SubscribeLiteral | AclType::SubscribePattern => {
                &[AclType::SubscribeLiteral, AclType::SubscribePattern]
            }
            AclType::UnsubscribeLiteral | AclType::UnsubscribePattern => {
                &[AclType::UnsubscribeLiteral, AclType::UnsubscribePattern]
            }
            _ => std::slice::from_ref(&kind),
        };
        for role in roles {
            for &k in kinds {
                for acl in role.acls_of(k) {
                    let hit = match k {
                        AclType::PublishClientSend | AclType::PublishClientReceive => {
                            midge_proto::topic::matches(&acl.topic, topic)
                        }
                        AclType::SubscribeLiteral | AclType::UnsubscribeLiteral => {
                            acl.topic == topic
                        }
                        AclType::SubscribePattern | AclType::UnsubscribePattern => {
                            covers_filter(&acl.topic, topic)
                        }
                    };
                    if hit {
                        return acl.allow;
                    }
                }
            }
        }
        self.default_access.for_type(kind)
    }

    /// Whether every topic under `filter` may be received (`Allowed`), or only some,
    /// perhaps none (`Partly`: each delivery is then checked).
    pub fn receive_verdict(&self, username: Option<&str>, filter: &str) -> FilterVerdict {
        let mut seen_deny = false;
        for role in self.roles_for(username) {
            for acl in role.acls_of(AclType::PublishClientReceive) {
                if covers_filter(&acl.topic, filter) {
                    return if acl.allow && !seen_deny {
                        FilterVerdict::Allowed
                    } else {
                        FilterVerdict::Partly
                    };
                }
                seen_deny |= !acl.allow && intersects_filter(&acl.topic, filter);
            }
        }
        if self.default_access.publish_client_receive && !seen_deny {
            FilterVerdict::Allowed
        } else {
            FilterVerdict::Partly
        }
    }
}

fn put_opt(obj: &mut Map<String, Value>, key: &str, value: &Option<String>) {
    if let Some(v) = value {
        obj.insert(key.into(), json!(v));
    }
}

/// `[{name_key: name, "priority": p}]`, the priority left out where it is the default -1.
pub fn member_list(list: &[Member], name_key: &str) -> Value {
    Value::Array(
        list.iter()
            .map(|m| {
                let mut obj = Map::new();
                obj.insert(name_key.into(), json!(m.name));
                if m.priority != -1 {
                    obj.insert("priority".into(), json!(m.priority));
                }
                Value::Object(obj)
            })
            .collect(),
    )
}

/// A role as `getRole` and the file show it.
pub fn role_json(name: &str, r: &Role) -> Map<String, Value> {
    let mut obj = Map::new();
    obj.insert("rolename".into(), json!(name));
    put_opt(&mut obj, "textname", &r.textname);
    put_opt(&mut obj, "textdescription", &r.textdescription);
    let acls: Vec<Value> = AclType::ALL
        .into_iter()
        .flat_map(|k| {
            r.acls_of(k).iter().map(move |a| {
                json!({"acltype": k.name(), "topic": a.topic, "priority": a.priority, "allow": a.allow})
            })
        })
        .collect();
    obj.insert("acls".into(), Value::Array(acls));
    obj
}
