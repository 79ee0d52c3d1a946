//! The plugin's commands (`{"commands":[{"command": …}, …]}`) applied to a [`State`].
//! Replies carry the plugin's error texts, which `mosquitto_ctrl` prints as they are.

use serde_json::{Map, Value, json};

use super::state::{
    AclType, Client, Group, Hashed, Role, State, insert_member, members, parse_acl, remove_member,
    role_json,
};

/// Commands that only read: an admin API viewer may send these.
pub const READ_ONLY: [&str; 8] = [
    "getDefaultACLAccess",
    "getClient",
    "listClients",
    "getGroup",
    "listGroups",
    "getRole",
    "listRoles",
    "getAnonymousGroup",
];

/// What a command did: its reply data, and whether it changed the state.
pub(super) struct Done {
    pub(super) data: Option<Value>,
    pub(super) changed: bool,
}

fn done(changed: bool) -> Result<Done, String> {
    Ok(Done {
        data: None,
        changed,
    })
}

fn data(value: Value) -> Result<Done, String> {
    Ok(Done {
        data: Some(value),
        changed: false,
    })
}

fn string(cmd: &Map<String, Value>, key: &str) -> Result<String, String> {
    match cmd.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(format!("Invalid/missing {key}")),
    }
}

fn opt_string(cmd: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match cmd.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("Invalid {key}")),
    }
}

fn priority(cmd: &Map<String, Value>) -> Result<i64, String> {
    match cmd.get("priority") {
        None => Ok(-1),
        Some(v) => v.as_i64().ok_or_else(|| "Invalid priority".to_owned()),
    }
}

/// A list command's reply: `{"totalCount": N, key: [...]}`, the names (or, with
/// `verbose`, the whole objects) from `offset`, `count` of them (-1: all).
fn page(
    cmd: &Map<String, Value>,
    key: &str,
    names: Vec<&String>,
    full: impl Fn(&str) -> Value,
) -> Value {
    let number = |k: &str, default: i64| cmd.get(k).and_then(Value::as_i64).unwrap_or(default);
    let offset = usize::try_from(number("offset", 0)).unwrap_or(0);
    let take = usize::try_from(number("count", -1)).unwrap_or(usize::MAX);
    let verbose = cmd.get("verbose").and_then(Value::as_bool).unwrap_or(false);
    let items: Vec<Value> = names
        .iter()
        .skip(offset)
        .take(take)
        .map(|n| if verbose { full(n) } else { json!(n) })
        .collect();
    json!({"totalCount": names.len(), key: items})
}

/// The roles of a `roles` list in a command, each of which must exist.
fn role_list(
    state: &State,
    cmd: &Map<String, Value>,
) -> Result<Option<Vec<super::state::Member>>, String> {
    if !cmd.contains_key("roles") {
        return Ok(None);
    }
    let list = members(cmd, "roles", "rolename").map_err(|_| "Invalid roles".to_owned())?;
    if list.iter().any(|m| !state.roles.contains_key(&m.name)) {
        return Err("Role not found".into());
    }
    Ok(Some(list))
}

fn group_list(
    state: &State,
    cmd: &Map<String, Value>,
) -> Result<Option<Vec<super::state::Member>>, String> {
    if !cmd.contains_key("groups") {
        return Ok(None);
    }
    let list = members(cmd, "groups", "groupname").map_err(|_| "Invalid groups".to_owned())?;
    if list.iter().any(|m| !state.groups.contains_key(&m.name)) {
        return Err("Group not found".into());
    }
    Ok(Some(list))
}

fn acl_list(cmd: &Map<String, Value>) -> Result<Option<Role>, String> {
    let Some(acls) = cmd.get("acls") else {
        return Ok(None);
    };
    let acls = acls.as_array().ok_or("Invalid acls")?;
    let mut role = Role::default();
    for acl in acls {
        let acl = acl.as_object().ok_or("Invalid acls")?;
        let (kind, acl) = parse_acl(acl, -1)?;
        role.add_acl(kind, acl);
    }
    Ok(Some(role))
}

fn client_mut<'a>(state: &'a mut State, username: &str) -> Result<&'a mut Client, String> {
    state
        .clients
        .get_mut(username)
        .ok_or_else(|| "Client not found".to_owned())
}

fn hash(password: &str, iterations: u32) -> Result<Hashed, String> {
    Hashed::new(password.as_bytes(), iterations).map_err(|_| "Internal error".to_owned())
}

/// Applies one command to `state`. `Err` is the reply's `error` text; on error the state
/// is as it was.
pub(super) fn apply(
    state: &mut State,
    name: &str,
    cmd: &Map<String, Value>,
    iterations: u32,
) -> Result<Done, String> {
    match name {
        "getDefaultACLAccess" => {
            let d = &state.default_access;
            let acls: Vec<Value> = super::state::DefaultAccess::NAMES
                .iter()
                .map(|n| json!({"acltype": n, "allow": d.get(n)}))
                .collect();
            data(json!({"acls": acls}))
        }
        "setDefaultACLAccess" => {
            let acls = cmd
                .get("acls")
                .and_then(Value::as_array)
                .ok_or("Missing/invalid acls array")?;
            let mut next = state.default_access;
            for acl in acls {
                let kind = acl
                    .get("acltype")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                // The plugin's documents say `"allow": true`; mosquitto_ctrl 2.0 sends
                // `"access": "allow"`.
                let allow = match (acl.get("allow"), acl.get("access").and_then(Value::as_str)) {
                    (Some(Value::Bool(b)), _) => *b,
                    (None, Some("allow")) => true,
                    (None, Some("deny")) => false,
                    _ => return Err("Invalid allow".into()),
                };
                if !next.set(kind, allow) {
                    return Err("Invalid acltype".into());
                }
            }
            state.default_access = next;
            done(true)
        }

        "createClient" => {
            let username = string(cmd, "username")?;
            if state.clients.contains_key(&username) {
                return Err("Client already exists".into());
            }
            let roles = role_list(state, cmd)?.unwrap_or_default();
            let groups = group_list(state, cmd)?.unwrap_or_default();
            let password = match opt_string(cmd, "password")? {
                Some(p) => Some(hash(&p, iterations)?),
                None => None,
            };
            let client = Client {
                clientid: opt_string(cmd, "clientid")?.filter(|c| !c.is_empty()),
                password,
                textname: opt_string(cmd, "textname")?,
                textdescription: opt_string(cmd, "textdescription")?,
                disabled: false,
                roles,
                groups,
            };
            state.deleted.remove(&username);
            state.clients.insert(username, client);
            done(true)
        }
        "deleteClient" => {
            let username = string(cmd, "username")?;
            state.clients.remove(&username).ok_or("Client not found")?;
            state.deleted.insert(username, crate::model::now_millis());
            done(true)
        }
        "setClientId" => {
            let username = string(cmd, "username")?;
            let clientid = opt_string(cmd, "clientid")?.filter(|c| !c.is_empty());
            client_mut(state, &username)?.clientid = clientid;
            done(true)
        }
        "setClientPassword" => {
            let username = string(cmd, "username")?;
            let password = match cmd.get("password") {
                Some(Value::String(p)) => p.clone(),
                _ => return Err("Invalid/missing password".into()),
            };
            client_mut(state, &username)?;
            let hashed = hash(&password, iterations)?;
            client_mut(state, &username)?.password = Some(hashed);
            done(true)
        }
        "modifyClient" => {
            let username = string(cmd, "username")?;
            client_mut(state, &username)?;
            let roles = role_list(state, cmd)?;
            let groups = group_list(state, cmd)?;
            let password = match opt_string(cmd, "password")? {
                Some(p) => Some(hash(&p, iterations)?),
                None => None,
            };
            let (clientid, textname, textdescription) = (
                opt_string(cmd, "clientid")?,
                opt_string(cmd, "textname")?,
                opt_string(cmd, "textdescription")?,
            );
            let client = client_mut(state, &username)?;
            if let Some(c) = clientid {
                client.clientid = Some(c).filter(|c| !c.is_empty());
            }
            if password.is_some() {
                client.password = password;
            }
            if textname.is_some() {
                client.textname = textname;
            }
            if textdescription.is_some() {
                client.textdescription = textdescription;
            }
            if let Some(roles) = roles {
                client.roles = roles;
            }
            if let Some(groups) = groups {
                client.groups = groups;
            }
            done(true)
        }
        "enableClient" | "disableClient" => {
            let username = string(cmd, "username")?;
            client_mut(state, &username)?.disabled = name == "disableClient";
            done(true)
        }
        "getClient" => {
            let username = string(cmd, "username")?;
            let client = state.clients.get(&username).ok_or("Client not found")?;
            data(json!({"client": state.client_json(&username, client)}))
        }
        "listClients" => {
            let names: Vec<&String> = state.clients.keys().collect();
            let paged = page(cmd, "clients", names, |n| {
                state.client_json(n, &state.clients[n])
            });
            data(paged)
        }
        "addClientRole" => {
            let username = string(cmd, "username")?;
            let rolename = string(cmd, "rolename")?;
            let priority = priority(cmd)?;
            if !state.roles.contains_key(&rolename) {
                client_mut(state, &username)?;
                return Err("Role not found".into());
            }
            let client = client_mut(state, &username)?;
            if !insert_member(&mut client.roles, &rolename, priority) {
                return Err("Client is already in this role".into());
            }
            done(true)
        }
        "removeClientRole" => {
            let username = string(cmd, "username")?;
            let rolename = string(cmd, "rolename")?;
            let exists = state.roles.contains_key(&rolename);
            let client = client_mut(state, &username)?;
            if !exists {
                return Err("Role not found".into());
            }
            if !remove_member(&mut client.roles, &rolename) {
                return Err("Client does not have this role".into());
            }
            done(true)
        }

        "createGroup" => {
            let groupname = string(cmd, "groupname")?;
            if state.groups.contains_key(&groupname) {
                return Err("Group already exists".into());
            }
            let roles = role_list(state, cmd)?.unwrap_or_default();
            let group = Group {
                textname: opt_string(cmd, "textname")?,
                textdescription: opt_string(cmd, "textdescription")?,
                roles,
            };
            state.groups.insert(groupname, group);
            done(true)
        }
        "deleteGroup" => {
            let groupname = string(cmd, "groupname")?;
            if !state.groups.contains_key(&groupname) {
                return Err("Group not found".into());
            }
            if state.anonymous_group.as_deref() == Some(&groupname) {
                return Err("Deleting the anonymous group is forbidden".into());
            }
            state.groups.remove(&groupname);
            for client in state.clients.values_mut() {
                remove_member(&mut client.groups, &groupname);
            }
            done(true)
        }
        "modifyGroup" => {
            let groupname = string(cmd, "groupname")?;
            if !state.groups.contains_key(&groupname) {
                return Err("Group not found".into());
            }
            let roles = role_list(state, cmd)?;
            let clients = if cmd.contains_key("clients") {
                let list = members(cmd, "clients", "username")
                    .map_err(|_| "Invalid clients".to_owned())?;
                if list.iter().any(|m| !state.clients.contains_key(&m.name)) {
                    return Err("Client not found".into());
                }
                Some(list)
            } else {
                None
            };
            let (textname, textdescription) = (
                opt_string(cmd, "textname")?,
                opt_string(cmd, "textdescription")?,
            );
            let group = state.groups.get_mut(&groupname).ok_or("Group not found")?;
            if textname.is_some() {
                group.textname = textname;
            }
            if textdescription.is_some() {
                group.textdescription = textdescription;
            }
            if let Some(roles) = roles {
                group.roles = roles;
            }
            if let Some(clients) = clients {
                for (user, client) in state.clients.iter_mut() {
                    remove_member(&mut client.groups, &groupname);
                    if let Some(m) = clients.iter().find(|m| &m.name == user) {
                        insert_member(&mut client.groups, &groupname, m.priority);
                    }
                }
            }
            done(true)
        }
        "getGroup" => {
            let groupname = string(cmd, "groupname")?;
            let group = state.groups.get(&groupname).ok_or("Group not found")?;
            let mut obj = state.group_json(&groupname, group);
            obj.insert("clients".into(), state.group_clients(&groupname));
            data(json!({"group": obj}))
        }
        "listGroups" => {
            let names: Vec<&String> = state.groups.keys().collect();
            let paged = page(cmd, "groups", names, |n| {
                let mut obj = state.group_json(n, &state.groups[n]);
                obj.insert("clients".into(), state.group_clients(n));
                Value::Object(obj)
            });
            data(paged)
        }
        "addGroupClient" => {
            let groupname = string(cmd, "groupname")?;
            let username = string(cmd, "username")?;
            let priority = priority(cmd)?;
            let exists = state.groups.contains_key(&groupname);
            let client = client_mut(state, &username)?;
            if !exists {
                return Err("Group not found".into());
            }
            if !insert_member(&mut client.groups, &groupname, priority) {
                return Err("Client is already in this group".into());
            }
            done(true)
        }
        "removeGroupClient" => {
            let groupname = string(cmd, "groupname")?;
            let username = string(cmd, "username")?;
            let exists = state.groups.contains_key(&groupname);
            let client = client_mut(state, &username)?;
            if !exists {
                return Err("Group not found".into());
            }
            if !remove_member(&mut client.groups, &groupname) {
                return Err("Client not in group".into());
            }
            done(true)
        }
        "addGroupRole" | "removeGroupRole" => {
            let groupname = string(cmd, "groupname")?;
            let rolename = string(cmd, "rolename")?;
            let priority = priority(cmd)?;
            let role_exists = state.roles.contains_key(&rolename);
            let group = state.groups.get_mut(&groupname).ok_or("Group not found")?;
            if !role_exists {
                return Err("Role not found".into());
            }
            if name == "addGroupRole" {
                if !insert_member(&mut group.roles, &rolename, priority) {
                    return Err("Group is already in this role".into());
                }
            } else if !remove_member(&mut group.roles, &rolename) {
                return Err("Group does not have this role".into());
            }
            done(true)
        }
        "setAnonymousGroup" => {
            let groupname = string(cmd, "groupname")?;
            if !state.groups.contains_key(&groupname) {
                return Err("Group not found".into());
            }
            state.anonymous_group = Some(groupname);
            done(true)
        }
        "getAnonymousGroup" => {
            let group = state.anonymous_group.clone().unwrap_or_default();
            data(json!({"group": {"groupname": group}}))
        }

        "createRole" => {
            let rolename = string(cmd, "rolename")?;
            if state.roles.contains_key(&rolename) {
                return Err("Role already exists".into());
            }
            let mut role = acl_list(cmd)?.unwrap_or_default();
            role.textname = opt_string(cmd, "textname")?;
            role.textdescription = opt_string(cmd, "textdescription")?;
            state.roles.insert(rolename, role);
            done(true)
        }
        "deleteRole" => {
            let rolename = string(cmd, "rolename")?;
            state.roles.remove(&rolename).ok_or("Role not found")?;
            for client in state.clients.values_mut() {
                remove_member(&mut client.roles, &rolename);
            }
            for group in state.groups.values_mut() {
                remove_member(&mut group.roles, &rolename);
            }
            done(true)
        }
        "modifyRole" => {
            let rolename = string(cmd, "rolename")?;
            if !state.roles.contains_key(&rolename) {
                return Err("Role not found".into());
            }
            let acls = acl_list(cmd)?;
            let (textname, textdescription) = (
                opt_string(cmd, "textname")?,
                opt_string(cmd, "textdescription")?,
            );
            let role = state.roles.get_mut(&rolename).ok_or("Role not found")?;
            if let Some(new) = acls {
                role.acls = new.acls;
            }
            if textname.is_some() {
                role.textname = textname;
            }
            if textdescription.is_some() {
                role.textdescription = textdescription;
            }
            done(true)
        }
        "getRole" => {
            let rolename = string(cmd, "rolename")?;
            let role = state.roles.get(&rolename).ok_or("Role not found")?;
            data(json!({"role": role_json(&rolename, role)}))
        }
        "listRoles" => {
            let names: Vec<&String> = state.roles.keys().collect();
            let paged = page(cmd, "roles", names, |n| {
                Value::Object(role_json(n, &state.roles[n]))
            });
            data(paged)
        }
        "addRoleACL" => {
            let rolename = string(cmd, "rolename")?;
            let (kind, acl) = parse_acl(cmd, -1)?;
            let role = state.roles.get_mut(&rolename).ok_or("Role not found")?;
            if !role.add_acl(kind, acl) {
                return Err("ACL with this topic already exists".into());
            }
            done(true)
        }
        "removeRoleACL" => {
            let rolename = string(cmd, "rolename")?;
            let kind = cmd
                .get("acltype")
                .and_then(Value::as_str)
                .and_then(AclType::parse)
                .ok_or("Invalid/missing acltype")?;
            let topic = string(cmd, "topic")?;
            let role = state.roles.get_mut(&rolename).ok_or("Role not found")?;
            if !role.remove_acl(kind, &topic) {
                return Err("ACL not found".into());
            }
            done(true)
        }
        _ => Err("Unknown command".into()),
    }
}
