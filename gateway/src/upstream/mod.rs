//! Where a client's SEND goes.
//!
//! - **Webhook** (when `upstream.webhook_url` is set): the gateway POSTs the
//!   message as JSON and turns the answer into the SEND_ACK. Calls run in
//!   their own tasks, bounded by `upstream.max_inflight` node-wide, so a slow
//!   business service never stalls a connection's reads.
//! - **Relay** (the default, so the product works alone): a SEND addressed to
//!   a uid is pushed to that uid's sessions on this node.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::config::UpstreamConfig;
use crate::node::Node;
use crate::protocol::{Code, Message};
use crate::push::{self, PushOptions, Status};
use crate::session::SessionHandle;

pub enum Upstream {
    Relay,
    Webhook(Webhook),
}

pub struct Webhook {
    url: String,
    http: reqwest::Client,
    inflight: Arc<Semaphore>,
}

/// What the webhook receives.
#[derive(Debug, Serialize)]
pub struct WebhookRequest<'a> {
    pub node: &'a str,
    pub session_id: u64,
    pub uid: &'a str,
    pub device: &'a str,
    pub seq: u32,
    pub to: &'a str,
    /// The SEND payload, base64 (standard alphabet, padded).
    pub payload_b64: String,
}

/// What the webhook answers (HTTP 2xx). Becomes the SEND_ACK. Unknown fields
/// are ignored, so a business service can add its own without breaking SENDs.
#[derive(Debug, Deserialize)]
pub struct WebhookResponse {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub payload_b64: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook HTTP client: {0}")]
pub struct UpstreamError(String);

impl Upstream {
    pub fn from_config(cfg: &UpstreamConfig) -> Result<Upstream, UpstreamError> {
        let Some(url) = &cfg.webhook_url else {
            return Ok(Upstream::Relay);
        };
        let http = reqwest::Client::builder()
            .timeout(cfg.webhook_timeout)
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| UpstreamError(e.to_string()))?;
        Ok(Upstream::Webhook(Webhook { url: url.clone(), http, inflight: Arc::new(Semaphore::new(cfg.max_inflight)) }))
    }

    pub fn describe(&self) -> String {
        match self {
            Upstream::Relay => "built-in relay (SEND to a uid is pushed to that uid on this node)".into(),
            Upstream::Webhook(w) => format!("webhook {}", w.url),
        }
    }

    /// Handle one SEND. The SEND_ACK (echoing `seq`) is queued on `from`'s outbox.
    pub fn handle_send(&self, node: &Arc<Node>, from: &Arc<SessionHandle>, seq: u32, to: String, payload: Bytes) {
        match self {
            Upstream::Relay => {
                let node = node.clone();
                let from = from.clone();
                // Relay waits for the write to the target socket, so it runs
                // beside the reader; the outbox keeps SEND_ACKs bounded.
                tokio::spawn(async move {
                    let (code, message) = relay(&node, &from, &to, &payload).await;
                    ack(&node, &from, seq, code, message, Bytes::new());
                });
            }
            Upstream::Webhook(w) => {
                let Ok(permit) = w.inflight.clone().try_acquire_owned() else {
                    ack(
                        node,
                        from,
                        seq,
                        Code::UpstreamBusy,
                        "too many SENDs in flight on this node; retry".into(),
                        Bytes::new(),
                    );
                    return;
                };
                let (node, from, url, http) = (node.clone(), from.clone(), w.url.clone(), w.http.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let (code, message, body) = call_webhook(&node, &http, &url, &from, seq, &to, &payload).await;
                    ack(&node, &from, seq, code, message, body);
                });
            }
        }
    }
}

fn ack(node: &Node, from: &SessionHandle, seq: u32, code: Code, message: String, payload: Bytes) {
    node.metrics.sends.inc(code.name());
    let frame = Message::SendAck { code: code as u16, message, payload }.to_bytes(seq);
    // A full queue closes the sender as a slow consumer; nothing more to do here.
    let _ = from.outbox.push(frame, None);
}

async fn relay(node: &Arc<Node>, from: &SessionHandle, to: &str, payload: &Bytes) -> (Code, String) {
    if to.is_empty() {
        return (Code::Rejected, "no business upstream is configured: address the SEND to a uid".into());
    }
    if crate::auth::check_id(to, node.config.session.max_uid_bytes).is_err() {
        return (Code::Rejected, "target uid is not a valid uid".into());
    }
    // The relayed PUSH adds a header and the sender's uid to the payload.
    let room = node.config.session.max_frame_bytes.saturating_sub(8 + 1 + from.uid.len());
    if payload.len() > room {
        return (Code::Rejected, format!("payload too large to relay (at most {room} bytes)"));
    }
    let opts = PushOptions {
        wait_ack: false,
        timeout: node.config.push_api.default_ack_timeout,
        except_session: Some(from.id),
    };
    let outcome = push::push_to_uid(node, to, &from.uid, payload, node.next_push_id(), &opts).await;
    match outcome.status {
        Status::Delivered | Status::Acked => (Code::Ok, String::new()),
        Status::Offline | Status::Closed => (Code::TargetOffline, format!("{to} is not online")),
        Status::Slow | Status::Timeout => (Code::TargetSlow, format!("{to} is not reading; not delivered")),
    }
}

async fn call_webhook(
    node: &Node,
    http: &reqwest::Client,
    url: &str,
    from: &SessionHandle,
    seq: u32,
    to: &str,
    payload: &Bytes,
) -> (Code, String, Bytes) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let req = WebhookRequest {
        node: &node.id,
        session_id: from.id,
        uid: &from.uid,
        device: &from.device,
        seq,
        to,
        payload_b64: b64.encode(payload),
    };
    let resp = match http.post(url).json(&req).send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return (Code::UpstreamTimeout, "business upstream timed out".into(), Bytes::new()),
        Err(e) => {
            tracing::warn!(error = %e, "webhook call failed");
            return (Code::UpstreamError, "business upstream unavailable".into(), Bytes::new());
        }
    };
    let status = resp.status();
    if !status.is_success() {
        return (Code::UpstreamError, format!("business upstream answered HTTP {}", status.as_u16()), Bytes::new());
    }
    // Bound what we read from the upstream as carefully as what clients send:
    // chunk by chunk, never trusting Content-Length.
    let max = node.config.session.max_frame_bytes;
    let cap = max * 2;
    let mut resp = resp;
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= cap => body.extend_from_slice(&chunk),
            Ok(Some(_)) => return (Code::UpstreamError, "business upstream answer too large".into(), Bytes::new()),
            Ok(None) => break,
            Err(e) if e.is_timeout() => {
                return (Code::UpstreamTimeout, "business upstream timed out".into(), Bytes::new())
            }
            Err(_) => return (Code::UpstreamError, "business upstream answer unreadable".into(), Bytes::new()),
        }
    }
    let parsed: WebhookResponse = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "webhook answer is not the expected JSON");
            return (Code::UpstreamError, "business upstream answer malformed".into(), Bytes::new());
        }
    };
    let payload = match parsed.payload_b64.as_deref().map(|p| b64.decode(p)) {
        None => Bytes::new(),
        Some(Ok(p)) if p.len() <= max.saturating_sub(512) => Bytes::from(p),
        Some(_) => return (Code::UpstreamError, "business upstream payload invalid or too large".into(), Bytes::new()),
    };
    // The business service chooses its own codes; 0 means accepted. Its
    // non-zero code travels in the message, since SEND_ACK's code space is ours.
    let mut message = parsed.message;
    message.truncate(floor_char_boundary(&message, 1024));
    if parsed.code == 0 {
        (Code::Ok, message, payload)
    } else {
        (Code::Rejected, format!("rejected by business upstream (code {}): {message}", parsed.code), payload)
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}
