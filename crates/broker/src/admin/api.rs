//! The routes: `/metrics` and the REST API under `/api/v1`. Errors are JSON,
//! `{"error": {"code": "...", "message": "..."}}`, with an honest status.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query};
use axum::http::{Response, StatusCode, header};
use axum::routing::{delete, get, post};
use base64ct::Encoding;
use bytes::Bytes;
use midge_proto::{PublishProperties, QoS};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminContext, metrics};
use crate::registry::KickOutcome;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with this status, machine-readable code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The JSON response.
    pub fn into_response(self) -> Response<Body> {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = Response::new(Body::from(body.to_string()));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        response
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        ApiError::into_response(self)
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// How long a client detail waits for the connection to describe itself.
const DESCRIBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Items per page when `limit` is not given.
const DEFAULT_PAGE: usize = 100;
/// Items per page at most: no request allocates in proportion to the broker's size.
pub(super) const MAX_PAGE: usize = 1000;
/// Largest request body (a publish): 1 MiB plus room for JSON and base64.
const MAX_BODY: usize = 2 * 1024 * 1024;

/// `?limit=`: the page size, checked against [`MAX_PAGE`]. Paging is by cursor: `after`
/// is the last key of the previous page, which its answer gives as `next`.
fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit {n} is out of range: 1 to {MAX_PAGE}"
        ))),
    }
}

/// A query string, or a JSON 400 saying what is wrong with it.
fn query<T>(parsed: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    parsed
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("query string: {}", e.body_text())))
}

/// A page of `items`; `next` is the cursor for the next page when this one is full.
fn page(items: Vec<Value>, limit: usize, key: impl Fn(&Value) -> Option<String>) -> Value {
    let next = (items.len() == limit)
        .then(|| items.last().and_then(&key))
        .flatten();
    json!({"items": items, "next": next})
}

/// Every route, over `context`.
pub(super) fn router(context: AdminContext) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/health", get(health))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/listeners", get(listeners))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/sessions", get(sessions))
        .route("/api/v1/clients", get(clients))
        .route("/api/v1/clients/{client_id}", get(client).delete(kick))
        .route("/api/v1/queues", get(queues))
        .route("/api/v1/subscriptions", get(subscriptions))
        .route("/api/v1/retained", get(retained))
        .route("/api/v1/retained/{*topic}", delete(delete_retained))
        .route("/api/v1/publish", post(publish))
        .route("/api/v1/dynsec", post(dynsec))
        .route("/api/v1/live", get(live_view))
        .route("/api/v1/cluster/nodes", get(cluster_nodes))
        .route("/api/v1/cluster/clients/{client_id}", get(cluster_client))
        .route("/api/v1/openapi.json", get(openapi))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(context)
}

/// The dashboard: one page embedded in the binary, which talks to `/api/v1` with the
/// browser's login.
async fn dashboard() -> Response<Body> {
    let mut response = Response::new(Body::from(include_str!("dashboard.html")));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Everything it needs is in the page and on this origin.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

async fn metrics_text(State(context): State<AdminContext>) -> Response<Body> {
    let text = metrics::render(&context);
    let mut response = Response::new(Body::from(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    response
}

async fn health(State(context): State<AdminContext>) -> ApiResult {
    Ok(Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": context.broker.uptime_secs(),
    })))
}

/// The counters of [`crate::stats`], plus the gauges.
async fn stats(State(context): State<AdminContext>) -> ApiResult {
    let broker = &context.broker;
    let s = broker.stats.snapshot();
    let sessions = broker.registry.len() as u64;
    let amqp_connections = broker.amqp.connections.len() as u64;
    let mqtt_connected = s.clients_connected.saturating_sub(amqp_connections);
    Ok(Json(json!({
        "uptime_secs": broker.uptime_secs(),
        "connections": {
            "connected": s.clients_connected,
            "maximum": s.clients_maximum,
            "accepted": s.connections_accepted,
            "refused_max_connections": s.connections_refused,
            "connects_refused": s.connects_refused,
            "handshakes_failed": s.handshakes_failed,
            "protocol_errors": s.protocol_errors,
        },
        "sessions": {
            "total": sessions,
            "online": mqtt_connected.min(sessions),
            "offline": sessions.saturating_sub(mqtt_connected),
            "taken_over": s.sessions_taken_over,
            "expired": s.sessions_expired,
        },
        "subscriptions": broker.router.len(),
        "retained_messages": broker.retained.len(),
        "amqp": {"connections": amqp_connections, "queues": broker.amqp.len()},
        "messages": {
            "received": s.publish_received,
            "delivered": s.publish_sent,
            "dropped": s.publish_dropped,
            "denied": s.publish_denied,
            "retained_dropped": s.retained_dropped,
            "wills_published": s.wills_published,
        },
        "drops": {
            "queue": s.publish_dropped.saturating_sub(s.publish_dropped_expired + s.publish_dropped_too_large),
            "expired": s.publish_dropped_expired,
            "too_large": s.publish_dropped_too_large,
            "not_authorized": s.publish_denied,
            "retained_queue_full": s.retained_dropped,
            "store_full": broker.journal.as_ref().map_or(0, |j| {
                j.stats().dropped_full.load(std::sync::atomic::Ordering::Relaxed)
            }),
        },
        "packets": {"received": s.packets_received, "sent": s.packets_sent},
        "bytes": {"received": s.bytes_received, "sent": s.bytes_sent},
    })))
}

async fn listeners(State(context): State<AdminContext>) -> ApiResult {
    let list: Vec<Value> = context
        .listeners
        .list()
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "protocol": l.scheme,
                "address": l.addr.to_string(),
                "connections": l.connections.load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .collect();
    Ok(Json(json!({ "listeners": list })))
}

/// Dynamic-security commands: the same `{"commands":[…]}` document as on
/// `$CONTROL/dynamic-security/v1`, answered with the same `{"responses":[…]}`. A viewer
/// may send only the commands that read. Changes apply at once, as over MQTT.
async fn dynsec(
    State(context): State<AdminContext>,
    axum::Extension(role): axum::Extension<super::Role>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response<Body>, ApiError> {
    let Some(dynsec) = context.guard.dynsec().cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_configured",
            "dynamic security is not configured ([auth.dynsec])",
        ));
    };
    let body = body.map_err(|e| ApiError::new(e.status(), "bad_request", e.body_text()))?;
    let read_only = role == super::Role::Viewer;
    let caller = if read_only {
        "admin API (viewer)"
    } else {
        "admin API"
    };
    let outcome = tokio::task::spawn_blocking(move || dynsec.execute(&body, caller, read_only))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    if outcome.changed {
        context.broker.access_changed();
    }
    let mut response = Response::new(Body::from(outcome.response));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// What SIGHUP does: 200 with the report (`changes`, and `restart_required`: keys whose
/// new values wait for a restart). A config file that does not load, or new settings that
/// cannot be used, change nothing; a password, ACL or certificate file that fails to load
/// again keeps its previous contents. Both answer 409 with the reason, since the request
/// was valid but the files on disk are not.
async fn reload(State(context): State<AdminContext>) -> ApiResult {
    // On a task of its own, so that a client going away does not cancel it half-way.
    let reload = context.reload.clone();
    match tokio::spawn(async move { reload().await }).await {
        Ok(Ok(report)) => Ok(Json(report)),
        Ok(Err(message)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "reload_failed",
            message,
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct SessionQuery {
    limit: Option<usize>,
    after: Option<String>,
    /// Client id substring.
    client_id: Option<String>,
    /// `online` / `connected`, or `offline`.
    state: Option<String>,
    /// Clients only: user name, exactly.
    username: Option<String>,
    /// Clients only: address (`ip` or `ip:port`) substring.
    address: Option<String>,
}

/// Sessions scanned at most by one client list request filtered by user name or address
/// (each is asked to describe itself); `next` continues the scan.
const MAX_SCAN: usize = 5000;

/// Asks each connected session of `sessions` to describe itself, all at once, and waits
/// for the answers until [`DESCRIBE_TIMEOUT`] (a connection that ends meanwhile gives
/// none).
async fn describe_all(
    context: &AdminContext,
    sessions: Vec<crate::registry::SessionSummary>,
) -> Vec<(
    crate::registry::SessionSummary,
    Option<crate::mailbox::ConnectionDetail>,
)> {
    let asked: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            let answer = context.broker.registry.describe(&s.client_id);
            (s, answer)
        })
        .collect();
    let deadline = tokio::time::Instant::now() + DESCRIBE_TIMEOUT;
    let mut out = Vec::with_capacity(asked.len());
    for (summary, answer) in asked {
        let detail = match answer {
            Some(answer) => tokio::time::timeout_at(deadline, answer)
                .await
                .ok()
                .and_then(Result::ok),
            None => None,
        };
        out.push((summary, detail));
    }
    out
}

fn connection_json(c: &crate::mailbox::ConnectionDetail) -> Value {
    json!({
        "address": c.peer.to_string(),
        "listener": c.listener,
        "protocol": c.protocol,
        "username": c.username,
        "keep_alive": c.keep_alive,
        "connected_at_ms": c.connected_at_ms,
        "bytes_received": c.bytes_received,
        "bytes_sent": c.bytes_sent,
        "dropped": c.dropped,
    })
}

/// Connected clients whose connection matches `username` and `address`: scanned in
/// client id order from `after`, a batch at a time, up to [`MAX_SCAN`] sessions.
async fn clients_by_connection(context: &AdminContext, query: &SessionQuery) -> ApiResult {
    let limit = page_limit(query.limit)?;
    let needle = query.client_id.as_deref().unwrap_or("");
    let mut items = Vec::new();
    let mut cursor = query.after.clone();
    let mut scanned = 0;
    let mut exhausted = false;
    while items.len() < limit && scanned < MAX_SCAN {
        let batch = context.broker.registry.sessions_page(
            cursor.as_deref(),
            DEFAULT_PAGE.min(MAX_SCAN - scanned),
            |s| s.online && s.client_id.contains(needle),
        );
        if batch.is_empty() {
            exhausted = true;
            break;
        }
        scanned += batch.len();
        for (summary, detail) in describe_all(context, batch).await {
            cursor = Some(summary.client_id.to_string());
            let Some(c) = detail else { continue };
            let user_ok = query
                .username
                .as_deref()
                .is_none_or(|u| c.username.as_deref() == Some(u));
            let address_ok = query
                .address
                .as_deref()
                .is_none_or(|a| c.peer.to_string().contains(a));
            if user_ok && address_ok {
                let mut item = session_json(&summary);
                item["connection"] = connection_json(&c);
                items.push(item);
                if items.len() == limit {
                    break;
                }
            }
        }
    }
    // More may follow unless the scan reached the end.
    let next = (!exhausted).then_some(cursor).flatten();
    Ok(Json(json!({"items": items, "next": next})))
}

/// Which sessions a `state` filter keeps: `Some(true)` online only.
fn state_filter(state: Option<&str>) -> Result<Option<bool>, ApiError> {
    match state {
        None | Some("") | Some("all") => Ok(None),
        Some("online" | "connected") => Ok(Some(true)),
        Some("offline" | "disconnected") => Ok(Some(false)),
        Some(other) => Err(ApiError::bad_request(format!(
            "state `{other}` is not one of online, offline, all"
        ))),
    }
}

fn session_json(s: &crate::registry::SessionSummary) -> Value {
    // RabbitMQ's queue columns: messages = ready + unacknowledged; consumers is the
    // connection serving the session, if any.
    let unacked = s.inflight;
    json!({
        "client_id": &*s.client_id,
        "name": &*s.client_id,
        "protocol": "mqtt",
        "online": s.online,
        "messages": unacked.map(|u| s.queued + u),
        "messages_ready": s.queued,
        "messages_unacknowledged": unacked,
        "consumers": u8::from(s.online),
        "subscriptions": s.subscriptions,
        "expires_at_ms": s.expires_at,
    })
}

/// MQTT sessions in client id order, a page at a time, with AMQP queues (as sessions) or
/// AMQP connections (as clients) merged in by client id.
fn list_sessions(
    context: &AdminContext,
    query: &SessionQuery,
    only: Option<bool>,
    amqp_entries: Option<AmqpEntries>,
) -> Result<Value, ApiError> {
    let limit = page_limit(query.limit)?;
    let needle = query.client_id.as_deref().unwrap_or("");
    let mut items: Vec<Value> = context
        .broker
        .registry
        .sessions_page(query.after.as_deref(), limit, |s| {
            only.is_none_or(|online| s.online == online) && s.client_id.contains(needle)
        })
        .iter()
        .map(session_json)
        .collect();
    let amqp = &context.broker.amqp;
    let extra: Vec<Value> = match amqp_entries {
        Some(AmqpEntries::Queues) => amqp.all().iter().map(|q| q.describe()).collect(),
        Some(AmqpEntries::Connections) => amqp
            .connections
            .all()
            .iter()
            .map(|c| c.describe())
            .collect(),
        None => Vec::new(),
    };
    let key = |v: &Value| v["client_id"].as_str().unwrap_or("").to_owned();
    items.extend(extra.into_iter().filter(|v| {
        let id = key(v);
        query
            .after
            .as_deref()
            .is_none_or(|after| id.as_str() > after)
            && id.contains(needle)
            && only.is_none_or(|online| v["online"] == online)
    }));
    items.sort_by_key(|v| key(v));
    items.truncate(limit);
    Ok(page(items, limit, |v| {
        v["client_id"].as_str().map(str::to_owned)
    }))
}

/// Which AMQP entries a list merges in.
#[derive(Debug, Clone, Copy)]
enum AmqpEntries {
    Queues,
    Connections,
}

/// AMQP queues with RabbitMQ's `list_queues` columns (`name messages consumers`, ready
/// and unacknowledged), in name order.
async fn queues(
    State(context): State<AdminContext>,
    parsed: Result<Query<SessionQuery>, QueryRejection>,
) -> ApiResult {
    let query = query(parsed)?;
    let limit = page_limit(query.limit)?;
    let needle = query.client_id.as_deref().unwrap_or("");
    let items: Vec<Value> = context
        .broker
        .amqp
        .all()
        .iter()
        .filter(|q| q.name.contains(needle) && query.after.as_deref().is_none_or(|a| &*q.name > a))
        .take(limit)
        .map(|q| q.describe())
        .collect();
    Ok(Json(page(items, limit, |v| {
        v["name"].as_str().map(str::to_owned)
    })))
}

/// Every session, online or not, with the queue columns.
async fn sessions(
    State(context): State<AdminContext>,
    parsed: Result<Query<SessionQuery>, QueryRejection>,
) -> ApiResult {
    let query = query(parsed)?;
    let only = state_filter(query.state.as_deref())?;
    Ok(Json(list_sessions(
        &context,
        &query,
        only,
        Some(AmqpEntries::Queues),
    )?))
}

/// Sessions seen as clients: connected ones by default (`state=offline` or `all` for the
/// others).
async fn clients(
    State(context): State<AdminContext>,
    parsed: Result<Query<SessionQuery>, QueryRejection>,
) -> ApiResult {
    let query = query(parsed)?;
    if query.username.is_some() || query.address.is_some() {
        if query
            .state
            .as_deref()
            .is_some_and(|s| !matches!(s, "online" | "connected"))
        {
            return Err(ApiError::bad_request(
                "username and address filters apply to connected clients only",
            ));
        }
        return clients_by_connection(&context, &query)
            .await
            .map(|Json(v)| Json(with_node(&context, v)));
    }
    let only = match query.state.as_deref() {
        None => Some(true),
        state => state_filter(state)?,
    };
    let list = list_sessions(&context, &query, only, Some(AmqpEntries::Connections))?;
    Ok(Json(with_node(&context, list)))
}

/// On a cluster node, each listed client gets `node`: this node's id (clients of other
/// nodes are found through `/api/v1/cluster/clients/{client_id}`).
fn with_node(context: &AdminContext, mut list: Value) -> Value {
    if let Some(owners) = context.cluster.as_ref()
        && let Some(items) = list["items"].as_array_mut()
    {
        for item in items {
            item["node"] = json!(owners.node_id());
        }
    }
    list
}

fn not_clustered() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_clustered",
        "this broker is a single node (no [cluster])",
    )
}

/// The cluster's live nodes: those whose heartbeat arrived within the node TTL.
async fn cluster_nodes(State(context): State<AdminContext>) -> ApiResult {
    let owners = context.cluster.as_ref().ok_or_else(not_clustered)?;
    let nodes: Vec<Value> = owners
        .nodes()
        .into_iter()
        .map(|(record, age)| {
            json!({
                "node": record.node,
                "self": record.node == owners.node_id(),
                "started_at_ms": record.started_at_ms,
                "clients": (record.node != owners.node_id()).then_some(record.clients),
                "last_seen_ms_ago": age.as_millis() as u64,
            })
        })
        .collect();
    let counter = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let stats = &owners.stats;
    Ok(Json(json!({
        "node": owners.node_id(),
        "items": nodes,
        "ownership": {
            "claims": counter(&stats.claims),
            "takeovers_sent": counter(&stats.takeovers_sent),
            "taken_over_remotely": counter(&stats.taken_over_remotely),
            "refused": counter(&stats.refused),
            "leave_timeouts": counter(&stats.leave_timeouts),
        },
    })))
}

/// Which node holds a connected client id, from the cluster's owners bucket.
async fn cluster_client(
    State(context): State<AdminContext>,
    Path(client_id): Path<String>,
) -> ApiResult {
    let owners = context.cluster.as_ref().ok_or_else(not_clustered)?;
    match owners.owner_of(&client_id).await {
        Ok(Some(holder)) => Ok(Json(json!({
            "client_id": client_id,
            "node": holder.node,
            "connection": holder.connection,
            "local": holder.node == owners.node_id(),
        }))),
        Ok(None) => Err(ApiError::not_found(format!(
            "no node holds client id `{client_id}`"
        ))),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            format!("the owners bucket could not be read: {e}"),
        )),
    }
}

async fn client(State(context): State<AdminContext>, Path(client_id): Path<String>) -> ApiResult {
    let found = context
        .broker
        .registry
        .sessions_page(None, 1, |s| *s.client_id == *client_id);
    let Some(summary) = found.first() else {
        return Err(ApiError::not_found(format!(
            "no session with client id `{client_id}`"
        )));
    };
    let mut detail = session_json(summary);
    if let Some(owners) = context.cluster.as_ref() {
        detail["node"] = json!(owners.node_id());
    }
    // The connection answers for itself; a connection that is leaving does not.
    let answer = match context.broker.registry.describe(&client_id) {
        Some(answer) => tokio::time::timeout(DESCRIBE_TIMEOUT, answer)
            .await
            .ok()
            .and_then(Result::ok),
        None => None,
    };
    if let Some(c) = answer {
        detail["messages_unacknowledged"] = json!(c.inflight);
        detail["messages"] = json!(summary.queued + c.inflight);
        detail["subscriptions"] = json!(c.subscriptions);
        detail["connection"] = connection_json(&c);
    } else {
        detail["connection"] = Value::Null;
    }
    Ok(Json(detail))
}

#[derive(Debug, Deserialize)]
struct RetainedQuery {
    limit: Option<usize>,
    after: Option<String>,
    filter: Option<String>,
}

fn message_json(m: &crate::model::Message) -> Value {
    let p = &m.properties;
    let user: Vec<Value> = p
        .user_properties
        .iter()
        .map(|(k, v)| json!([k, v]))
        .collect();
    json!({
        "topic": m.topic,
        "payload_base64": base64ct::Base64::encode_string(&m.payload),
        "payload": std::str::from_utf8(&m.payload).ok(),
        "qos": m.qos as u8,
        "properties": {
            "payload_format_indicator": p.payload_format_indicator,
            "content_type": p.content_type,
            "response_topic": p.response_topic,
            "correlation_data_base64": p.correlation_data.as_ref().map(|d| base64ct::Base64::encode_string(d)),
            "user_properties": user,
            "message_expiry_at_ms": m.expires_at,
        },
    })
}

/// Retained messages matching `filter` (default `#`), in topic order.
async fn retained(
    State(context): State<AdminContext>,
    parsed: Result<Query<RetainedQuery>, QueryRejection>,
) -> ApiResult {
    let query = query(parsed)?;
    let limit = page_limit(query.limit)?;
    let filter = query.filter.as_deref().unwrap_or("#");
    midge_proto::topic::validate_topic_filter(filter)
        .map_err(|e| ApiError::bad_request(format!("filter `{filter}`: {e}")))?;
    let mut matching = context
        .broker
        .retained
        .matching(filter, crate::model::now_millis());
    if let Some(after) = &query.after {
        matching.retain(|m| m.topic.as_str() > after.as_str());
    }
    // Only the page is sorted and kept.
    let take = limit.min(matching.len());
    if take > 0 && take < matching.len() {
        matching.select_nth_unstable_by(take - 1, |a, b| a.topic.cmp(&b.topic));
    }
    matching.truncate(take);
    matching.sort_unstable_by(|a, b| a.topic.cmp(&b.topic));
    let items: Vec<Value> = matching.iter().map(|m| message_json(m)).collect();
    Ok(Json(page(items, limit, |v| {
        v["topic"].as_str().map(str::to_owned)
    })))
}

async fn delete_retained(
    State(context): State<AdminContext>,
    Path(topic): Path<String>,
) -> ApiResult {
    midge_proto::topic::validate_topic_name(&topic)
        .map_err(|e| ApiError::bad_request(format!("topic `{topic}`: {e}")))?;
    let broker = &context.broker;
    if broker
        .retained
        .matching(&topic, crate::model::now_millis())
        .is_empty()
    {
        return Err(ApiError::not_found(format!(
            "no retained message on `{topic}`"
        )));
    }
    // An empty retained message removes it, as from a client, but reaches no subscriber.
    let empty = crate::model::Message::internal(
        topic.clone(),
        Bytes::new(),
        true,
        crate::model::now_millis(),
    );
    broker.retained.update(&empty);
    if let Some(journal) = &broker.journal {
        journal.retained(&topic, None);
    }
    Ok(Json(json!({"deleted": topic})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    payload_encoding: PayloadEncoding,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    properties: PublishRequestProperties,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PayloadEncoding {
    #[default]
    Plain,
    Base64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequestProperties {
    payload_format_indicator: Option<u8>,
    message_expiry_interval: Option<u32>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<String>,
    #[serde(default)]
    user_properties: Vec<(String, String)>,
}

/// Publishes as the broker; answers with how many sessions the message was queued for.
async fn publish(
    State(context): State<AdminContext>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    let body = body.map_err(|e| {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_request"
        };
        ApiError::new(e.status(), code, e.body_text())
    })?;
    let request: PublishRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?;
    midge_proto::topic::validate_topic_name(&request.topic)
        .map_err(|e| ApiError::bad_request(format!("topic `{}`: {e}", request.topic)))?;
    let qos = QoS::from_u8(request.qos)
        .ok_or_else(|| ApiError::bad_request(format!("qos {} is not 0, 1 or 2", request.qos)))?;
    let payload = match request.payload_encoding {
        PayloadEncoding::Plain => Bytes::from(request.payload),
        PayloadEncoding::Base64 => Bytes::from(
            base64ct::Base64::decode_vec(&request.payload)
                .map_err(|_| ApiError::bad_request("payload is not valid base64"))?,
        ),
    };
    let max = context.broker.config().mqtt.max_packet_size as usize;
    if payload.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "payload of {} bytes is above mqtt.max_packet_size ({max})",
                payload.len()
            ),
        ));
    }
    let p = request.properties;
    let now = crate::model::now_millis();
    let mut message = crate::model::Message::internal(request.topic, payload, request.retain, now);
    message.qos = qos;
    message.expires_at = p.message_expiry_interval.map(|s| now + u64::from(s) * 1000);
    message.properties = PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data.map(Bytes::from),
        user_properties: p.user_properties,
        ..PublishProperties::default()
    }
    .into();
    let outcome = context.broker.publish(message);
    Ok(Json(
        json!({"matched": outcome.delivered, "dropped": outcome.dropped}),
    ))
}

async fn openapi() -> Response<Body> {
    let mut response = Response::new(Body::from(include_str!("openapi.json")));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[derive(Debug, Deserialize)]
struct KickQuery {
    #[serde(default)]
    discard_session: bool,
}

/// Disconnects a client (v5: DISCONNECT 0x98, administrative action);
/// `?discard_session=true` ends its session too, also when it is offline.
async fn kick(
    State(context): State<AdminContext>,
    Path(client_id): Path<String>,
    parsed: Result<Query<KickQuery>, QueryRejection>,
) -> ApiResult {
    let query = query(parsed)?;
    let broker = &context.broker;
    match broker.kick(&client_id, query.discard_session) {
        KickOutcome::Disconnecting => Ok(Json(json!({
            "client_id": client_id,
            "disconnected": true,
            "session_discarded": query.discard_session,
        }))),
        KickOutcome::SessionEnded => Ok(Json(json!({
            "client_id": client_id,
            "disconnected": false,
            "session_discarded": true,
        }))),
        KickOutcome::NotConnected => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_connected",
            format!("`{client_id}` is not connected; add ?discard_session=true to end its session"),
        )),
        KickOutcome::NotFound => Err(ApiError::not_found(format!(
            "no session with client id `{client_id}`"
        ))),
    }
}

#[derive(Debug, Deserialize)]
struct SubscriptionQuery {
    limit: Option<usize>,
    /// Cursor: the previous page's `next`, `{filter}` and `{client_id}` joined by a NUL
    /// (which neither may contain), as the answer gives it.
    after: Option<String>,
    /// Filter substring.
    filter: Option<String>,
    /// Client id substring.
    client_id: Option<String>,
}

/// Every subscription, in filter then client id order.
async fn subscriptions(
    State(context): State<AdminContext>,
    parsed: Result<Query<SubscriptionQuery>, QueryRejection>,
) -> ApiResult {
    let query = query(parsed)?;
    let limit = page_limit(query.limit)?;
    let after = match query.after.as_deref() {
        None => None,
        Some(cursor) => Some(cursor.split_once('\0').ok_or_else(|| {
            ApiError::bad_request("after is not a cursor from a previous page's next")
        })?),
    };
    let (filter, client) = (
        query.filter.as_deref().unwrap_or(""),
        query.client_id.as_deref().unwrap_or(""),
    );
    let items: Vec<Value> = context
        .broker
        .router
        .subscriptions_page(after, limit, &mut |f, c| {
            f.contains(filter) && c.contains(client)
        })
        .into_iter()
        .map(|s| {
            json!({
                "filter": s.filter,
                "client_id": &*s.client_id,
                "qos": s.options.qos as u8,
                "no_local": s.options.no_local,
                "retain_as_published": s.options.retain_as_published,
                "subscription_identifier": s.identifier,
                "online": s.online,
            })
        })
        .collect();
    Ok(Json(page(items, limit, |v| {
        Some(format!(
            "{}\0{}",
            v["filter"].as_str()?,
            v["client_id"].as_str()?
        ))
    })))
}

#[derive(Debug, Deserialize)]
struct LiveQuery {
    filter: String,
}

/// The messages matching `?filter=` as they are published (server-sent events).
async fn live_view(
    State(context): State<AdminContext>,
    parsed: Result<Query<LiveQuery>, QueryRejection>,
) -> Result<Response<Body>, ApiError> {
    let LiveQuery { filter } = query(parsed)?;
    midge_proto::topic::validate_topic_filter(&filter)
        .map_err(|e| ApiError::bad_request(format!("filter `{filter}`: {e}")))?;
    if filter.starts_with("$share/") {
        return Err(ApiError::bad_request(
            "a live view cannot join a shared subscription group",
        ));
    }
    super::live::open(&context, filter).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_live_views",
            format!(
                "{} live views are open, the most there may be",
                super::live::MAX_LIVE_VIEWS
            ),
        )
    })
}
