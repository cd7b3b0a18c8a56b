//! etcd v3 through its JSON gateway (`/v3/kv/*`, `/v3/lease/grant`,
//! `/v3/watch`), which etcd 3.4+ serves on the client port.
//!
//! Why HTTP/JSON rather than the gRPC client: it needs no `protoc` at build
//! time and reuses `reqwest`, and the ban store makes a handful of calls per
//! change. Keys and values travel base64-encoded; int64s travel as strings.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::replica::{Kv, KvError, KvEvent, KvFuture, Listing, Watch};

/// Bound on one unary call; a watch has no overall bound, only this for connecting.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on buffered watch output: a line longer than this is a broken stream.
const MAX_WATCH_LINE: usize = 16 * 1024 * 1024;

pub struct EtcdHttp {
    endpoints: Vec<String>,
    http: reqwest::Client,
    /// The endpoint that answered last; tried first next time.
    current: AtomicUsize,
}

impl EtcdHttp {
    pub fn new(endpoints: &[String]) -> EtcdHttp {
        let http = reqwest::Client::builder().connect_timeout(CALL_TIMEOUT).build().unwrap_or_default();
        EtcdHttp {
            endpoints: endpoints.iter().map(|e| e.trim_end_matches('/').to_string()).collect(),
            http,
            current: AtomicUsize::new(0),
        }
    }

    /// POST to each endpoint in turn, starting with the last good one.
    async fn send(&self, path: &str, body: &Value, timeout: Option<Duration>) -> Result<reqwest::Response, KvError> {
        let n = self.endpoints.len();
        if n == 0 {
            return Err(KvError::Unreachable("cluster.etcd_endpoints is empty".into()));
        }
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let url = format!("{}{path}", self.endpoints[idx]);
            let mut req = self.http.post(&url).json(body);
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(r);
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    return Err(KvError::Protocol(format!(
                        "{url}: HTTP {status}: {}",
                        text.chars().take(300).collect::<String>()
                    )));
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(KvError::Unreachable(last))
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, KvError> {
        let r = self.send(path, &body, Some(CALL_TIMEOUT)).await?;
        r.json::<Value>().await.map_err(|e| KvError::Protocol(format!("{path}: {e}")))
    }
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

fn unb64(v: &Value) -> Vec<u8> {
    v.as_str().and_then(|s| B64.decode(s).ok()).unwrap_or_default()
}

/// etcd's int64 fields arrive as JSON strings.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the key range holding every key that starts with `prefix`.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn parse_events(result: &Value) -> Vec<KvEvent> {
    let Some(events) = result.get("events").and_then(Value::as_array) else { return Vec::new() };
    events
        .iter()
        .filter_map(|e| {
            let kv = e.get("kv")?;
            let key = String::from_utf8(unb64(kv.get("key")?)).ok()?;
            // PUT is the enum's zero value, which proto3 JSON leaves out.
            Some(match e.get("type").and_then(Value::as_str) {
                Some("DELETE") => KvEvent::Delete { key },
                _ => KvEvent::Put { key, value: kv.get("value").map(unb64).unwrap_or_default() },
            })
        })
        .collect()
}

impl Kv for EtcdHttp {
    fn put<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Option<Duration>) -> KvFuture<'a, ()> {
        Box::pin(async move {
            let mut body = json!({ "key": b64(key.as_bytes()), "value": b64(&value) });
            if let Some(ttl) = ttl {
                // Rounded up, plus a second: the lease is garbage collection;
                // nodes lift the ban on their own clocks at `until`.
                let secs = ttl.as_secs() + 2;
                let lease = self.call("/v3/lease/grant", json!({ "TTL": secs })).await?;
                let id = lease
                    .get("ID")
                    .map(int)
                    .filter(|id| *id != 0)
                    .ok_or_else(|| KvError::Protocol(format!("lease grant: {lease}")))?;
                body["lease"] = json!(id.to_string());
            }
            self.call("/v3/kv/put", body).await.map(|_| ())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> KvFuture<'a, ()> {
        Box::pin(
            async move { self.call("/v3/kv/deleterange", json!({ "key": b64(key.as_bytes()) })).await.map(|_| ()) },
        )
    }

    fn list<'a>(&'a self, prefix: &'a str) -> KvFuture<'a, Listing> {
        Box::pin(async move {
            let r = self
                .call("/v3/kv/range", json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&range_end(prefix)) }))
                .await?;
            let revision = r.get("header").and_then(|h| h.get("revision")).map(int).unwrap_or(0);
            let kvs = r
                .get("kvs")
                .and_then(Value::as_array)
                .map(|kvs| {
                    kvs.iter()
                        .filter_map(|kv| {
                            let key = String::from_utf8(unb64(kv.get("key")?)).ok()?;
                            Some((key, kv.get("value").map(unb64).unwrap_or_default()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(Listing { kvs, revision })
        })
    }

    fn ping(&self) -> KvFuture<'_, ()> {
        Box::pin(async move { self.call("/v3/maintenance/status", json!({})).await.map(|_| ()) })
    }

    fn watch<'a>(&'a self, prefix: &'a str, after_revision: i64) -> KvFuture<'a, Watch> {
        Box::pin(async move {
            let body = json!({ "create_request": {
                "key": b64(prefix.as_bytes()),
                "range_end": b64(&range_end(prefix)),
                "start_revision": (after_revision + 1).to_string(),
            }});
            let mut resp = self.send("/v3/watch", &body, None).await?;
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(async move {
                let mut buf: Vec<u8> = Vec::new();
                loop {
                    let chunk = match resp.chunk().await {
                        Ok(Some(c)) => c,
                        Ok(None) => return,
                        Err(e) => {
                            let _ = tx.send(Err(KvError::Unreachable(format!("watch stream: {e}")))).await;
                            return;
                        }
                    };
                    buf.extend_from_slice(&chunk);
                    if buf.len() > MAX_WATCH_LINE {
                        let _ = tx.send(Err(KvError::Protocol("watch response line too long".into()))).await;
                        return;
                    }
                    while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=nl).collect();
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        let v: Value = match serde_json::from_slice(&line) {
                            Ok(v) => v,
                            Err(e) => {
                                let _ = tx.send(Err(KvError::Protocol(format!("watch: {e}")))).await;
                                return;
                            }
                        };
                        let Some(result) = v.get("result") else {
                            let _ = tx.send(Err(KvError::Protocol(format!("watch: {v}")))).await;
                            return;
                        };
                        if result.get("compact_revision").map(int).unwrap_or(0) > 0 {
                            let _ = tx.send(Err(KvError::Compacted)).await;
                            return;
                        }
                        if result.get("canceled").and_then(Value::as_bool) == Some(true) {
                            let _ = tx.send(Err(KvError::Protocol(format!("watch canceled: {result}")))).await;
                            return;
                        }
                        let events = parse_events(result);
                        if !events.is_empty() && tx.send(Ok(events)).await.is_err() {
                            return; // the reader is gone
                        }
                    }
                }
            });
            Ok(rx)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_end() {
        assert_eq!(range_end("/gateway/bans/"), b"/gateway/bans0".to_vec());
        assert_eq!(range_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn watch_events_decode_put_and_delete() {
        let v = json!({ "events": [
            { "kv": { "key": b64(b"/p/a"), "value": b64(b"{}"), "mod_revision": "5" } },
            { "type": "DELETE", "kv": { "key": b64(b"/p/b"), "mod_revision": "6" } }
        ]});
        assert_eq!(
            parse_events(&v),
            vec![KvEvent::Put { key: "/p/a".into(), value: b"{}".to_vec() }, KvEvent::Delete { key: "/p/b".into() }]
        );
    }
}
