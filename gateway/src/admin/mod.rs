//! The admin API for security staff: bans, kicks, node stats, health.
//!
//! Its own listener (`admin.listen`, loopback by default), apart from the push
//! API, so it can be firewalled and token-protected separately. Every `/v1`
//! call needs `Authorization: Bearer <token>`; the token's *name* is who the
//! audit log says did it. With no tokens configured the API only starts on a
//! loopback address (config validation refuses otherwise) and calls are
//! recorded as `anonymous`. `/healthz` and `/readyz` need no token.
//!
//! Errors are JSON `{"error": "..."}` with a status that says what to fix.
//! Documented for staff in `docs/admin-api.md` and
//! `docs/admin-api.openapi.yaml`.

pub mod audit;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub use audit::{AuditEntry, AuditLog};

use crate::bans::{Ban, BanMode, Change, SetError, Target};
use crate::config::AdminToken;
use crate::node::Node;
use crate::protocol::Code;
use crate::session::CloseReason;

/// Longest accepted `reason`; it is stored in every node's ban list.
const MAX_REASON: usize = 500;
/// Longest accepted ban: ten years (a typo such as `10000d` is refused).
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

struct AdminState {
    node: Arc<Node>,
    tokens: Vec<AdminToken>,
}

/// Who is calling: a token name, or `anonymous` on a tokenless loopback API.
#[derive(Clone, Debug)]
pub struct Who(pub String);

pub fn router(node: Arc<Node>) -> Router {
    let limit = node.config.admin.max_body_bytes;
    let state = Arc::new(AdminState { tokens: node.config.admin.tokens.clone(), node });
    let v1 = Router::new()
        .route("/v1/bans", get(list_bans).post(add_ban))
        .route("/v1/bans/bulk", post(add_bulk))
        .route("/v1/bans/{*target}", get(get_ban).delete(remove_ban))
        .route("/v1/kick", post(kick))
        .route("/v1/stats", get(stats))
        .route("/v1/audit", get(audit_log))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { AdminError::new(StatusCode::NOT_FOUND, "no such endpoint; see docs/admin-api.md") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    if node.config.admin.tokens.is_empty() {
        tracing::warn!(
            "admin API has no tokens: anyone on this host can ban and kick (set admin.tokens or GATEWAY_ADMIN_TOKENS)"
        );
    }
    let shutdown = node.shutdown.clone();
    let listener = crate::api::listener::BoundedListener::new(
        listener,
        crate::api::MAX_API_CONNECTIONS,
        std::time::Duration::from_secs(60),
    );
    let app = router(node);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await {
        tracing::error!(error = %e, "admin API server failed");
    }
}

#[derive(Debug)]
pub struct AdminError {
    status: StatusCode,
    message: String,
}

impl AdminError {
    fn new(status: StatusCode, message: impl Into<String>) -> AdminError {
        AdminError { status, message: message.into() }
    }
    fn bad(message: impl Into<String>) -> AdminError {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<JsonRejection> for AdminError {
    fn from(r: JsonRejection) -> AdminError {
        let status = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            // Unknown fields, wrong types, bad syntax: all the caller's to fix.
            _ => StatusCode::BAD_REQUEST,
        };
        AdminError::new(status, r.body_text())
    }
}

impl From<QueryRejection> for AdminError {
    fn from(r: QueryRejection) -> AdminError {
        AdminError::bad(r.body_text())
    }
}

/// Compare without an early exit, so response time does not reveal how much
/// of a guessed token was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(st): State<Arc<AdminState>>, mut req: Request, next: Next) -> Response {
    if st.tokens.is_empty() {
        req.extensions_mut().insert(Who("anonymous".into()));
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some(presented) = presented else {
        return AdminError::new(StatusCode::UNAUTHORIZED, "missing `Authorization: Bearer <token>` header")
            .into_response();
    };
    // Check every token, matched or not, for the same timing reason.
    let mut who = None;
    for t in &st.tokens {
        if same(t.token.as_bytes(), presented.as_bytes()) {
            who = Some(t.name.clone());
        }
    }
    match who {
        Some(name) => {
            req.extensions_mut().insert(Who(name));
            next.run(req).await
        }
        None => {
            tracing::warn!("admin API call with an unknown token");
            AdminError::new(StatusCode::UNAUTHORIZED, "unknown token").into_response()
        }
    }
}

/// A ban as staff send it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanRequest {
    /// An address, a CIDR, or `uid:<uid>`.
    pub target: String,
    pub reason: String,
    /// How long, e.g. `30m`, `12h`, `7d`. Omit (and `until`) for a permanent ban.
    #[serde(default)]
    pub ttl: Option<String>,
    /// When it ends, RFC 3339. Exclusive with `ttl`.
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub mode: BanMode,
    /// Required to ban a `/0` (every address of a family).
    #[serde(default)]
    pub force: bool,
}

impl BanRequest {
    fn into_ban(self, who: &str, now: SystemTime) -> Result<Ban, String> {
        let target = Target::parse(&self.target, self.force).map_err(|e| format!("target: {e}"))?;
        let reason = self.reason.trim();
        if reason.is_empty() {
            return Err("reason: must not be empty (it is shown to the user and in the audit log)".into());
        }
        if reason.chars().count() > MAX_REASON || reason.chars().any(char::is_control) {
            return Err(format!("reason: at most {MAX_REASON} characters, no control characters"));
        }
        let until = match (self.ttl, self.until) {
            (Some(_), Some(_)) => return Err("set `ttl` or `until`, not both".into()),
            (None, None) => None,
            (Some(ttl), None) => {
                let d = crate::config::parse_duration(&ttl).map_err(|e| format!("ttl: {ttl:?}: {e}"))?;
                if d.is_zero() || d > MAX_TTL {
                    return Err("ttl: must be more than 0 and at most 10 years (omit it for a permanent ban)".into());
                }
                Some(now + d)
            }
            (None, Some(u)) => {
                let t = humantime::parse_rfc3339_weak(&u)
                    .map_err(|e| format!("until: {u:?}: {e} (expected e.g. 2030-01-02T03:04:05Z)"))?;
                if t <= now {
                    return Err(format!("until: {u} is in the past"));
                }
                Some(t)
            }
        };
        Ok(Ban { target, reason: reason.to_string(), by: who.to_string(), created: now, until, mode: self.mode })
    }
}

#[derive(Serialize)]
struct BanResponse {
    ban: Ban,
    /// A ban on the same target existed and was replaced.
    replaced: bool,
    /// etcd is configured and reachable; otherwise the ban is enforced here
    /// and written to etcd once it is back.
    replicated: bool,
}

fn set_error(e: SetError) -> AdminError {
    AdminError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string())
}

async fn persist(node: &Node) -> Result<(), AdminError> {
    node.bans.persist().await.map_err(|e| {
        node.metrics.ban_apply_errors.inc();
        AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the ban is enforced but could not be saved: {e}"))
    })
}

fn apply(node: &Node, who: &str, ban: Ban) -> Result<bool, AdminError> {
    let (target, reason) = (ban.target.to_string(), ban.reason.clone());
    let detail =
        json!({ "mode": ban.mode, "until": ban.until.map(|u| humantime::format_rfc3339_millis(u).to_string()) });
    let change = node.bans.add(node, ban).map_err(set_error)?;
    let replaced = matches!(change, Some(Change::Put { old: Some(_), .. }));
    node.audit.record(who, "ban.add", &target, &reason, Some(detail));
    Ok(replaced)
}

async fn add_ban(
    State(st): State<Arc<AdminState>>,
    Extension(who): Extension<Who>,
    body: Result<Json<BanRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<BanResponse>), AdminError> {
    let Json(req) = body?;
    let ban = req.into_ban(&who.0, SystemTime::now()).map_err(AdminError::bad)?;
    let node = &st.node;
    let replaced = apply(node, &who.0, ban.clone())?;
    persist(node).await?;
    let replicated = node.bans.is_replicated() && node.bans.etcd_connected();
    Ok((if replaced { StatusCode::OK } else { StatusCode::CREATED }, Json(BanResponse { ban, replaced, replicated })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkRequest {
    bans: Vec<BanRequest>,
}

async fn add_bulk(
    State(st): State<Arc<AdminState>>,
    Extension(who): Extension<Who>,
    body: Result<Json<BulkRequest>, JsonRejection>,
) -> Result<Json<Value>, AdminError> {
    let Json(req) = body?;
    let node = &st.node;
    let max = node.config.admin.max_bulk;
    if req.bans.is_empty() {
        return Err(AdminError::bad("`bans` is empty"));
    }
    if req.bans.len() > max {
        return Err(AdminError::bad(format!("{} bans; at most {max} per request (admin.max_bulk)", req.bans.len())));
    }
    // All or nothing: validate every entry before applying any.
    let now = SystemTime::now();
    let mut bans = Vec::with_capacity(req.bans.len());
    let mut errors = Vec::new();
    for (i, r) in req.bans.into_iter().enumerate() {
        match r.into_ban(&who.0, now) {
            Ok(b) => bans.push(b),
            Err(e) => errors.push(format!("bans[{i}]: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(AdminError::bad(format!("nothing was applied: {}", errors.join("; "))));
    }
    let (mut added, mut replaced) = (0usize, 0usize);
    for b in bans {
        match apply(node, &who.0, b) {
            Ok(true) => replaced += 1,
            Ok(false) => added += 1,
            Err(e) => {
                persist(node).await?;
                return Err(AdminError::new(
                    e.status,
                    format!("{} (applied {added} new, {replaced} replaced before that)", e.message),
                ));
            }
        }
    }
    persist(node).await?;
    Ok(Json(json!({ "added": added, "replaced": replaced })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Substring of the target, reason or `by`.
    #[serde(default)]
    q: Option<String>,
    /// `ip` (addresses and networks) or `uid`.
    #[serde(default)]
    kind: Option<String>,
    /// Exact `by` (a staff name or `detector:conn_rate`).
    #[serde(default)]
    by: Option<String>,
    /// Only bans whose network contains this address.
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn list_bans(
    State(st): State<Arc<AdminState>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, AdminError> {
    let Query(q) = query?;
    let ip = match &q.ip {
        Some(s) => {
            Some(s.parse::<std::net::IpAddr>().map_err(|_| AdminError::bad(format!("ip: {s:?} is not an address")))?)
        }
        None => None,
    };
    let want_uid = match q.kind.as_deref() {
        None => None,
        Some("ip") => Some(false),
        Some("uid") => Some(true),
        Some(other) => return Err(AdminError::bad(format!("kind: {other:?}: expected \"ip\" or \"uid\""))),
    };
    let limit = q.limit.unwrap_or(1000).min(100_000);
    let needle = q.q.as_deref().map(str::to_lowercase);
    let all = st.node.bans.list();
    let total = all.len();
    let matched: Vec<Ban> = all
        .into_iter()
        .filter(|b| want_uid.is_none_or(|u| matches!(b.target, Target::Uid(_)) == u))
        .filter(|b| q.by.as_ref().is_none_or(|by| &b.by == by))
        .filter(|b| ip.is_none_or(|ip| b.target.net().is_some_and(|n| n.contains(ip))))
        .filter(|b| {
            needle.as_ref().is_none_or(|n| {
                b.target.to_string().to_lowercase().contains(n)
                    || b.reason.to_lowercase().contains(n)
                    || b.by.to_lowercase().contains(n)
            })
        })
        .collect();
    let count = matched.len();
    let bans: Vec<Ban> = matched.into_iter().take(limit).collect();
    Ok(Json(json!({ "total": total, "matched": count, "bans": bans })))
}

fn path_target(raw: &str) -> Result<Target, AdminError> {
    // Looking up or lifting a /0 ban is harmless, so no `force` here.
    Target::parse(raw, true).map_err(|e| AdminError::bad(format!("target: {e}")))
}

async fn get_ban(State(st): State<Arc<AdminState>>, Path(raw): Path<String>) -> Result<Json<Ban>, AdminError> {
    let target = path_target(&raw)?;
    st.node
        .bans
        .get(&target)
        .map(Json)
        .ok_or_else(|| AdminError::new(StatusCode::NOT_FOUND, format!("no ban on {target}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    #[serde(default)]
    reason: Option<String>,
}

async fn remove_ban(
    State(st): State<Arc<AdminState>>,
    Extension(who): Extension<Who>,
    Path(raw): Path<String>,
    query: Result<Query<RemoveQuery>, QueryRejection>,
) -> Result<Json<Value>, AdminError> {
    let Query(q) = query?;
    let target = path_target(&raw)?;
    let node = &st.node;
    let Some(old) = node.bans.remove(node, &target) else {
        return Err(AdminError::new(StatusCode::NOT_FOUND, format!("no ban on {target}")));
    };
    node.audit.record(&who.0, "ban.remove", &target.to_string(), q.reason.as_deref().unwrap_or(""), None);
    persist(node).await?;
    Ok(Json(json!({ "removed": old })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KickRequest {
    uid: String,
    reason: String,
    /// Only this device's session.
    #[serde(default)]
    device: Option<String>,
}

async fn kick(
    State(st): State<Arc<AdminState>>,
    Extension(who): Extension<Who>,
    body: Result<Json<KickRequest>, JsonRejection>,
) -> Result<Json<Value>, AdminError> {
    let Json(req) = body?;
    let node = &st.node;
    if crate::auth::check_id(&req.uid, node.config.session.max_uid_bytes).is_err() {
        return Err(AdminError::bad(format!("uid: {:?} is not a valid uid", req.uid)));
    }
    let reason = req.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON {
        return Err(AdminError::bad(format!("reason: required, at most {MAX_REASON} characters")));
    }
    let mut kicked = 0u64;
    for s in node.registry.by_uid(&req.uid) {
        if req.device.as_deref().is_some_and(|d| *d != *s.device) {
            continue;
        }
        if s.outbox.close(CloseReason::Kick(Code::KickedByAdmin, reason.to_string())) {
            kicked += 1;
        }
    }
    node.metrics.kicks.add(Code::KickedByAdmin.name(), kicked);
    node.audit.record(
        &who.0,
        "kick",
        &format!("uid:{}", req.uid),
        reason,
        Some(json!({ "sessions": kicked, "device": req.device })),
    );
    Ok(Json(json!({ "kicked": kicked })))
}

async fn stats(State(st): State<Arc<AdminState>>) -> Json<Value> {
    use crate::abuse::detector::*;
    let n = &st.node;
    let m = &n.metrics;
    let bans = n.bans.list();
    let uid_bans = bans.iter().filter(|b| matches!(b.target, Target::Uid(_))).count();
    let hits: serde_json::Map<String, Value> =
        [CONN_RATE, PER_SOURCE_OPEN, PER_SOURCE_PRELOGIN, GLOBAL_CAP, PACKET_RATE_DROP, PACKET_RATE_DISCONNECT]
            .iter()
            .map(|d| (d.to_string(), json!(m.abuse_hits.get(d))))
            .collect();
    let logins: serde_json::Map<String, Value> =
        ["ok", "token_invalid", "token_expired", "bad_identity", "duplicate_session", "timeout", "protocol", "banned"]
            .iter()
            .map(|r| (r.to_string(), json!(m.logins.get(r))))
            .collect();
    let xdp: serde_json::Map<String, Value> =
        n.defense.counters().into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    Json(json!({
        "node": n.id,
        "connections": {
            "open": m.connections_open.get(),
            "prelogin": m.connections_prelogin.get(),
            "sessions": n.registry.len(),
            "accepted_total": m.connections_accepted.get(),
        },
        "logins": logins,
        "detector_hits": hits,
        "auto_bans": m.auto_bans.get(),
        "bans": { "total": bans.len(), "ip": bans.len() - uid_bans, "uid": uid_bans, "unsynced": n.bans.unsynced() },
        "etcd": { "configured": n.bans.is_replicated(), "connected": n.bans.etcd_connected() },
        "xdp": { "enforcement": n.defense.enforcement().to_string(), "counters": xdp },
        "audit_dropped": n.audit.dropped.load(std::sync::atomic::Ordering::Relaxed),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    limit: Option<usize>,
}

async fn audit_log(
    State(st): State<Arc<AdminState>>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, AdminError> {
    let Query(q) = query?;
    Ok(Json(st.node.audit.recent(q.limit.unwrap_or(100).min(audit::RECENT))))
}

async fn readyz(State(st): State<Arc<AdminState>>) -> (StatusCode, Json<Value>) {
    let n = &st.node;
    let ready = n.bans.loaded() && !n.shutdown.is_cancelled();
    let etcd = match (n.bans.is_replicated(), n.bans.etcd_connected()) {
        (false, _) => "disabled",
        (true, true) => "connected",
        // Not a reason to be unready: the node enforces its last-known list.
        (true, false) => "disconnected",
    };
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready, "etcd": etcd, "bans": n.bans.len() })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> BanRequest {
        serde_json::from_value(v).expect("parses")
    }

    #[test]
    fn ban_request_validation() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let ok = req(json!({"target": "192.0.2.0/24", "reason": "scan", "ttl": "10m"})).into_ban("alice", now).unwrap();
        assert_eq!(ok.until, Some(now + Duration::from_secs(600)));
        assert_eq!(ok.by, "alice");
        for (body, needle) in [
            (json!({"target": "192.0.2.300", "reason": "x"}), "target"),
            (json!({"target": "0.0.0.0/0", "reason": "x"}), "force"),
            (json!({"target": "uid:a b", "reason": "x"}), "uid"),
            (json!({"target": "uid:bob", "reason": " "}), "reason"),
            (json!({"target": "uid:bob", "reason": "x", "ttl": "0s"}), "ttl"),
            (json!({"target": "uid:bob", "reason": "x", "ttl": "soon"}), "ttl"),
            (json!({"target": "uid:bob", "reason": "x", "ttl": "1h", "until": "2099-01-01T00:00:00Z"}), "not both"),
            (json!({"target": "uid:bob", "reason": "x", "until": "2000-01-01T00:00:00Z"}), "past"),
        ] {
            let e = req(body.clone()).into_ban("alice", now).expect_err("must be refused");
            assert!(e.contains(needle), "{body} -> {e}");
        }
        assert!(req(json!({"target": "0.0.0.0/0", "reason": "x", "force": true})).into_ban("a", now).is_ok());
        assert!(
            serde_json::from_value::<BanRequest>(json!({"target": "1.2.3.4", "reason": "x", "by": "me"})).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn constant_time_compare() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
