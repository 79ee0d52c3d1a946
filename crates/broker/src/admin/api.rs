//! The routes: `/metrics` and the REST API under `/api/v1`. Errors are JSON,
//! `{"error": {"code": "...", "message": "..."}}`, with an honest status.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Response, StatusCode, header};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{AdminContext, metrics};

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

/// Every route, over `context`.
pub(super) fn router(context: AdminContext) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/api/v1/health", get(health))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/listeners", get(listeners))
        .route("/api/v1/reload", post(reload))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(context)
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
            "online": s.clients_connected.min(sessions),
            "offline": sessions.saturating_sub(s.clients_connected),
            "taken_over": s.sessions_taken_over,
            "expired": s.sessions_expired,
        },
        "subscriptions": broker.router.len(),
        "retained_messages": broker.retained.len(),
        "messages": {
            "received": s.publish_received,
            "delivered": s.publish_sent,
            "dropped": s.publish_dropped,
            "denied": s.publish_denied,
            "retained_dropped": s.retained_dropped,
            "wills_published": s.wills_published,
        },
        "packets": {"received": s.packets_received, "sent": s.packets_sent},
        "bytes": {"received": s.bytes_received, "sent": s.bytes_sent},
    })))
}

async fn listeners(State(context): State<AdminContext>) -> ApiResult {
    let list: Vec<Value> = context
        .listeners
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

/// What SIGHUP does. A file that fails to load keeps its previous contents: 409 with
/// the reason, since the request was valid but the files on disk are not.
async fn reload(State(context): State<AdminContext>) -> ApiResult {
    let reload = context.reload.clone();
    match tokio::task::spawn_blocking(move || reload()).await {
        Ok(Ok(())) => Ok(Json(json!({"reloaded": true}))),
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
