//! The internal HTTP API for business services: push, broadcast, metrics.
//!
//! Listens on `push_api.listen` (127.0.0.1 by default: it has no auth and must
//! stay on a trusted network). Every error is JSON `{"error": "..."}` with a
//! 4xx status that says what to fix. See `docs/protocol.md` ("Push API").

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::defense::Enforcement;

pub mod listener;
use crate::node::Node;
use crate::push::{self, PushOptions, UidOutcome};

/// Room for the PUSH body's fixed fields (push id, `from`) inside a frame.
const PUSH_OVERHEAD: usize = 8 + 1 + 255;

pub fn router(node: Arc<Node>) -> Router {
    let limit = node.config.push_api.max_body_bytes;
    Router::new()
        .route("/v1/push", post(push_handler))
        .route("/v1/broadcast", post(broadcast_handler))
        .route("/v1/sessions/{uid}", get(sessions_handler))
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see docs/protocol.md (Push API)")
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(node)
}

/// Connections the internal HTTP APIs hold at once (each API its own pool).
pub const MAX_API_CONNECTIONS: usize = 1024;

pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let shutdown = node.shutdown.clone();
    // Long enough for a request that waits the longest PUSH_ACK timeout.
    let idle = node.config.push_api.max_ack_timeout + Duration::from_secs(30);
    let listener = listener::BoundedListener::new(listener, MAX_API_CONNECTIONS, idle);
    let app = router(node);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await {
        tracing::error!(error = %e, "push API server failed");
    }
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        let status = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, r.body_text())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    pub uids: Vec<String>,
    /// UTF-8 payload; or use `payload_b64` for binary. Exactly one of them.
    #[serde(default)]
    pub payload: Option<String>,
    #[serde(default)]
    pub payload_b64: Option<String>,
    /// Shown to the client as the PUSH's `from` (empty: the business itself).
    #[serde(default)]
    pub from: String,
    /// Wait for PUSH_ACK from each session (status `acked`).
    #[serde(default)]
    pub wait_ack: bool,
    /// How long to wait for the write (and the ack); default `push_api.default_ack_timeout`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct PushResponse {
    pub push_id: u64,
    pub results: Vec<UidOutcome>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    #[serde(default)]
    pub payload: Option<String>,
    #[serde(default)]
    pub payload_b64: Option<String>,
    #[serde(default)]
    pub from: String,
}

#[derive(Debug, Serialize)]
pub struct BroadcastResponse {
    pub push_id: u64,
    /// Sessions the push was queued for.
    pub queued: u64,
    /// Sessions disconnected as slow consumers instead.
    pub slow: u64,
    /// Sessions that were already closing.
    pub closed: u64,
}

fn payload(node: &Node, text: Option<String>, b64: Option<String>) -> Result<Bytes, ApiError> {
    let bytes = match (text, b64) {
        (Some(t), None) => Bytes::from(t),
        (None, Some(b)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|e| ApiError::bad(format!("payload_b64 is not valid base64: {e}")))?,
        ),
        (None, None) => return Err(ApiError::bad("missing payload: set `payload` (text) or `payload_b64`")),
        (Some(_), Some(_)) => return Err(ApiError::bad("set only one of `payload` and `payload_b64`")),
    };
    let max = node.config.session.max_frame_bytes.saturating_sub(PUSH_OVERHEAD);
    if bytes.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "payload is {} bytes; the limit is {max} (session.max_frame_bytes minus the PUSH header)",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

fn check_from(node: &Node, from: &str) -> Result<(), ApiError> {
    if !from.is_empty() && crate::auth::check_id(from, node.config.session.max_uid_bytes).is_err() {
        return Err(ApiError::bad(
            "`from` must be a valid uid (no whitespace or control characters, within session.max_uid_bytes)",
        ));
    }
    Ok(())
}

async fn push_handler(
    State(node): State<Arc<Node>>,
    body: Result<Json<PushRequest>, JsonRejection>,
) -> Result<Json<PushResponse>, ApiError> {
    let Json(req) = body?;
    let cfg = &node.config.push_api;
    if req.uids.is_empty() {
        return Err(ApiError::bad("`uids` is empty"));
    }
    if req.uids.len() > cfg.max_uids_per_request {
        return Err(ApiError::bad(format!(
            "{} uids; at most {} per request (push_api.max_uids_per_request)",
            req.uids.len(),
            cfg.max_uids_per_request
        )));
    }
    for uid in &req.uids {
        if crate::auth::check_id(uid, node.config.session.max_uid_bytes).is_err() {
            return Err(ApiError::bad(format!("invalid uid {uid:?}")));
        }
    }
    check_from(&node, &req.from)?;
    let timeout = match req.timeout_ms {
        None => cfg.default_ack_timeout,
        Some(0) => return Err(ApiError::bad("timeout_ms must be greater than 0")),
        Some(ms) if Duration::from_millis(ms) > cfg.max_ack_timeout => {
            return Err(ApiError::bad(format!(
                "timeout_ms exceeds push_api.max_ack_timeout ({:?})",
                cfg.max_ack_timeout
            )))
        }
        Some(ms) => Duration::from_millis(ms),
    };
    let data = payload(&node, req.payload, req.payload_b64)?;
    let push_id = node.next_push_id();
    let opts = PushOptions { wait_ack: req.wait_ack, timeout, except_session: None };
    // A uid listed twice gets the push once, and one result.
    let mut uids = req.uids;
    let mut seen = std::collections::HashSet::new();
    uids.retain(|u| seen.insert(u.clone()));
    let results = futures::future::join_all(
        uids.iter().map(|uid| push::push_to_uid(&node, uid, &req.from, &data, push_id, &opts)),
    )
    .await;
    Ok(Json(PushResponse { push_id, results }))
}

async fn broadcast_handler(
    State(node): State<Arc<Node>>,
    body: Result<Json<BroadcastRequest>, JsonRejection>,
) -> Result<Json<BroadcastResponse>, ApiError> {
    let Json(req) = body?;
    check_from(&node, &req.from)?;
    let data = payload(&node, req.payload, req.payload_b64)?;
    let push_id = node.next_push_id();
    let (queued, slow, closed) = push::broadcast(&node, &req.from, &data, push_id);
    Ok(Json(BroadcastResponse { push_id, queued, slow, closed }))
}

#[derive(Serialize)]
struct SessionInfo {
    session_id: u64,
    device: String,
    peer: String,
    idle_ms: u64,
}

async fn sessions_handler(State(node): State<Arc<Node>>, Path(uid): Path<String>) -> Json<Vec<SessionInfo>> {
    let now = node.clock.now_ms();
    Json(
        node.registry
            .by_uid(&uid)
            .into_iter()
            .map(|s| SessionInfo {
                session_id: s.id,
                device: s.device.to_string(),
                peer: s.peer.to_string(),
                idle_ms: now.saturating_sub(s.last_seen_ms()),
            })
            .collect(),
    )
}

async fn metrics_handler(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let mut extra = String::new();
    let xdp_active = matches!(node.defense.enforcement(), Enforcement::Xdp { .. });
    extra.push_str(&format!(
        "# HELP gateway_xdp_active 1 when the XDP program enforces the blacklist, 0 when accept-time checks do.\n# TYPE gateway_xdp_active gauge\ngateway_xdp_active {}\n",
        xdp_active as u8
    ));
    // In XDP mode these count packets judged in the kernel (summed over
    // CPUs); in userspace mode, connections judged at accept.
    let scope = if xdp_active { "xdp" } else { "accept" };
    extra.push_str("# HELP gateway_defense_verdicts_total Defense verdicts by reason (scope: xdp = packets in the kernel, accept = connections).\n# TYPE gateway_defense_verdicts_total counter\n");
    for (name, v) in node.defense.counters() {
        extra.push_str(&format!("gateway_defense_verdicts_total{{scope=\"{scope}\",reason=\"{name}\"}} {v}\n"));
    }
    let events = node.defense.event_stats();
    if !events.is_empty() {
        extra.push_str("# HELP gateway_xdp_drop_events_total Drop-event stream (xdp.drop_events): emitted, rate-limited, lost.\n# TYPE gateway_xdp_drop_events_total counter\n");
        for (name, v) in events {
            extra.push_str(&format!("gateway_xdp_drop_events_total{{stat=\"{name}\"}} {v}\n"));
        }
    }
    extra.push_str(&format!(
        "# HELP gateway_bans Bans in this node's list (all targets, both modes).\n# TYPE gateway_bans gauge\ngateway_bans {}\n",
        node.bans.len()
    ));
    extra.push_str(&format!(
        "# HELP gateway_bans_unsynced Ban changes not yet written to etcd.\n# TYPE gateway_bans_unsynced gauge\ngateway_bans_unsynced {}\n",
        node.bans.unsynced()
    ));
    if node.bans.is_replicated() {
        extra.push_str(&format!(
            "# HELP gateway_etcd_connected 1 while the ban watch on etcd is healthy.\n# TYPE gateway_etcd_connected gauge\ngateway_etcd_connected {}\n",
            node.bans.etcd_connected() as u8
        ));
    }
    let body = node.metrics.render(node.registry.len(), &extra);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
