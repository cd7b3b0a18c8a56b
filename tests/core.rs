//! The main job end to end: TLS, login, heartbeats, registry, push, relay.
//! Every test runs a real gateway on loopback and talks to it over TLS.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use gateway::client::{Client, ClientError};
use gateway::protocol::{Code, Message, Op, VERSION};
use gateway_tests::harness::TestGateway;
use serde_json::json;

const T: Duration = Duration::from_secs(5);

fn raw_header(len: u32, version: u8, op: u8, seq: u32) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32(len);
    b.put_u8(version);
    b.put_u8(op);
    b.put_u16(0);
    b.put_u32(seq);
    b.to_vec()
}

/// The next message must be ERROR(code), and then the server must close.
async fn expect_error_then_close(c: &mut Client, code: Code) {
    match c.recv_timeout(T).await {
        Ok((_, Message::Error { code: got, message })) => {
            assert_eq!(got, code as u16, "expected ERROR {} but got {got} ({message})", code.name())
        }
        other => panic!("expected ERROR {}, got {other:?}", code.name()),
    }
    expect_closed(c).await;
}

async fn expect_closed(c: &mut Client) {
    match c.recv_timeout(T).await {
        Err(ClientError::Closed) => {}
        other => panic!("expected the server to close the connection, got {other:?}"),
    }
}

async fn expect_push(c: &mut Client) -> (u64, String, Vec<u8>) {
    loop {
        match c.recv_timeout(T).await {
            Ok((_, Message::Push { push_id, from, payload })) => return (push_id, from, payload.to_vec()),
            Ok((_, Message::HeartbeatAck)) => continue,
            other => panic!("expected PUSH, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_ack_carries_node_session_and_interval_then_heartbeat_is_acked() {
    let gw = TestGateway::start(|_| {}).await;
    let (mut c, info) = gw.login("alice", Some("phone")).await;
    assert_eq!(info.node_id, "test-node");
    assert_eq!(info.heartbeat, Duration::from_secs(270), "the default interval from the seed");
    assert!(info.session_id > 0);
    let seq = c.heartbeat().await.unwrap();
    match c.recv_timeout(T).await.unwrap() {
        (s, Message::HeartbeatAck) => assert_eq!(s, seq, "HEARTBEAT_ACK echoes the seq"),
        other => panic!("expected HEARTBEAT_ACK, got {other:?}"),
    }
    let sessions = gw.get_json("/v1/sessions/alice").await;
    assert_eq!(sessions[0]["session_id"], info.session_id);
    assert_eq!(sessions[0]["device"], "phone");
    assert_eq!(gw.metric("gateway_logins_total{result=\"ok\"}").await, 1);
    assert_eq!(gw.metric("gateway_heartbeats_total").await, 1);
    assert_eq!(gw.metric("gateway_bans").await, 0);
    assert_eq!(gw.metric("gateway_xdp_active").await, 0, "tests run with XDP off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_gets_token_invalid_and_close() {
    let gw = TestGateway::start(|_| {}).await;
    let mut c = gw.connect().await;
    let forged =
        gateway::auth::mint_hs256(b"not-the-node-secret-at-all", "mallory", None, Duration::from_secs(60)).unwrap();
    c.send(Message::Login { token: forged }).await.unwrap();
    expect_error_then_close(&mut c, Code::TokenInvalid).await;
    let mut c = gw.connect().await;
    c.send(Message::Login { token: "not.a.jwt".into() }).await.unwrap();
    expect_error_then_close(&mut c, Code::TokenInvalid).await;
    assert_eq!(gw.metric("gateway_logins_total{result=\"token_invalid\"}").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_gets_its_own_code() {
    let gw = TestGateway::start(|_| {}).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expired = gateway::auth::mint_hs256_at(&gw.secret, "alice", None, now - 7200, now - 3600).unwrap();
    let mut c = gw.connect().await;
    c.send(Message::Login { token: expired }).await.unwrap();
    expect_error_then_close(&mut c, Code::TokenExpired).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_at_the_login_deadline() {
    let gw = TestGateway::start(|c| c.session.login_timeout = "1s".into()).await;
    let mut c = gw.connect().await;
    let started = std::time::Instant::now();
    expect_error_then_close(&mut c, Code::LoginTimeout).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(4), "closed after {took:?}");
    gw.wait_metric("gateway_logins_total{result=\"timeout\"}", |v| v == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_login_frame_cannot_extend_the_deadline() {
    let gw = TestGateway::start(|c| c.session.login_timeout = "1s".into()).await;
    let mut c = gw.connect().await;
    let frame = Message::Login { token: gw.token("slowpoke", None) }.to_bytes(1);
    let started = std::time::Instant::now();
    // One byte every 100 ms: the whole frame would take far longer than 1 s.
    for b in frame.iter() {
        if c.send_raw(&[*b]).await.is_err() || started.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expect_error_then_close(&mut c, Code::LoginTimeout).await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_length_is_rejected_from_the_header() {
    let gw = TestGateway::start(|_| {}).await;
    // Pre-login: a 4 GiB length. The ERROR must come at once, from the header alone.
    let mut c = gw.connect().await;
    c.send_raw(&raw_header(u32::MAX, VERSION, Op::Login as u8, 5)).await.unwrap();
    match c.recv_timeout(T).await {
        Ok((seq, Message::Error { code, .. })) => {
            assert_eq!(code, Code::FrameTooLarge as u16);
            assert_eq!(seq, 5, "ERROR echoes the offending seq");
        }
        other => panic!("expected ERROR frame_too_large, got {other:?}"),
    }
    expect_closed(&mut c).await;

    // The pre-login limit (4 KiB) is smaller than the post-login one (64 KiB).
    let mut c = gw.connect().await;
    c.send(Message::Login { token: "x".repeat(5000) }).await.unwrap();
    expect_error_then_close(&mut c, Code::FrameTooLarge).await;
    let (mut a, _) = gw.login("big", None).await;
    let (mut b, _) = gw.login("bigger", None).await;
    a.send(Message::Send { to: "bigger".into(), payload: vec![7u8; 20_000].into() }).await.unwrap();
    let (_, from, payload) = expect_push(&mut b).await;
    assert_eq!((from.as_str(), payload.len()), ("big", 20_000));
    a.send_raw(&raw_header(64 * 1024 + 1, VERSION, Op::Send as u8, 9)).await.unwrap();
    loop {
        match a.recv_timeout(T).await {
            Ok((_, Message::SendAck { .. })) => continue,
            Ok((_, Message::Error { code, .. })) => {
                assert_eq!(code, Code::FrameTooLarge as u16);
                break;
            }
            other => panic!("expected ERROR frame_too_large, got {other:?}"),
        }
    }
    expect_closed(&mut a).await;
    assert!(gw.metric("gateway_frames_rejected_total{code=\"frame_too_large\"}").await >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_op_and_bad_version_are_errors_then_close() {
    let gw = TestGateway::start(|_| {}).await;
    let (mut c, _) = gw.login("alice", None).await;
    c.send_raw(&raw_header(0, VERSION, 0x7e, 3)).await.unwrap();
    expect_error_then_close(&mut c, Code::UnknownOp).await;

    let mut c = gw.connect().await;
    c.send_raw(&raw_header(0, 9, Op::Heartbeat as u8, 1)).await.unwrap();
    expect_error_then_close(&mut c, Code::BadVersion).await;

    // Anything but LOGIN first is refused.
    let mut c = gw.connect().await;
    c.heartbeat().await.unwrap();
    expect_error_then_close(&mut c, Code::NotLoggedIn).await;

    // A server-to-client op from a client is a protocol violation.
    let (mut c, _) = gw.login("bob", None).await;
    let seq = c.send(Message::Kick { code: 1, message: "hi".into() }).await.unwrap();
    match c.recv_timeout(T).await {
        Ok((s, Message::Error { code, .. })) => {
            assert_eq!((s, code), (seq, Code::UnexpectedOp as u16), "ERROR echoes the seq")
        }
        other => panic!("expected ERROR unexpected_op, got {other:?}"),
    }
    expect_closed(&mut c).await;
    // Other sessions are unaffected.
    let (mut ok, _) = gw.login("carol", None).await;
    ok.heartbeat().await.unwrap();
    assert!(matches!(ok.recv_timeout(T).await, Ok((_, Message::HeartbeatAck))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_session_and_silence_closes_it() {
    // timeout = 1s * 1 + 500ms
    let gw = TestGateway::start(|c| {
        c.heartbeat.interval = "1s".into();
        c.heartbeat.timeout_factor = 1;
        c.heartbeat.grace = "500ms".into();
    })
    .await;
    let (mut live, _) = gw.login("live", None).await;
    let (mut silent, _) = gw.login("silent", None).await;
    let started = std::time::Instant::now();
    // Keep pushing to the silent one: our own writes must not count as liveness.
    while started.elapsed() < Duration::from_millis(3500) {
        live.heartbeat().await.unwrap();
        let _ = gw.post("/v1/push", json!({"uids": ["silent"], "payload": "ping", "timeout_ms": 200})).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The silent session was closed with heartbeat_timeout; pushes before it are readable first.
    loop {
        match silent.recv_timeout(T).await {
            Ok((_, Message::Push { .. })) => continue,
            Ok((_, Message::Error { code, .. })) => {
                assert_eq!(code, Code::HeartbeatTimeout as u16);
                break;
            }
            Err(ClientError::Closed) => break,
            other => panic!("expected the silent session to time out, got {other:?}"),
        }
    }
    assert_eq!(gw.get_json("/v1/sessions/silent").await, json!([]));
    assert_eq!(gw.get_json("/v1/sessions/live").await.as_array().unwrap().len(), 1, "beating session must stay");
    assert_eq!(gw.metric("gateway_heartbeat_timeouts_total").await, 1);
    let (_, r) = gw.post("/v1/push", json!({"uids": ["live"], "payload": "still here"})).await;
    assert_eq!(r["results"][0]["status"], "delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_login_kicks_the_old_session_and_keeps_the_new_mapped() {
    let gw = TestGateway::start(|_| {}).await;
    let (mut old, old_info) = gw.login("alice", Some("phone")).await;
    let (_other_device, _) = gw.login("alice", Some("desktop")).await;
    let (mut new, new_info) = gw.login("alice", Some("phone")).await;
    match old.recv_timeout(T).await {
        Ok((_, Message::Kick { code, .. })) => assert_eq!(code, Code::DuplicateLogin as u16),
        other => panic!("old session should get KICK duplicate_login, got {other:?}"),
    }
    expect_closed(&mut old).await;
    // The old connection's cleanup has run by now; the new mapping must survive it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sessions = gw.get_json("/v1/sessions/alice").await;
    let ids: Vec<u64> = sessions.as_array().unwrap().iter().map(|s| s["session_id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 2, "phone (new) + desktop: {sessions}");
    assert!(ids.contains(&new_info.session_id) && !ids.contains(&old_info.session_id));
    let (_, r) = gw.post("/v1/push", json!({"uids": ["alice"], "payload": "x"})).await;
    assert_eq!(r["results"][0]["sessions"].as_array().unwrap().len(), 2);
    let (_, _, payload) = expect_push(&mut new).await;
    assert_eq!(payload, b"x");
    assert_eq!(gw.metric("gateway_kicks_total{reason=\"duplicate_login\"}").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_new_policy_keeps_the_old_session() {
    let gw = TestGateway::start(|c| c.session.duplicate_login = "refuse_new".into()).await;
    let (mut old, info) = gw.login("alice", None).await;
    let mut dup = gw.connect().await;
    dup.send(Message::Login { token: gw.token("alice", None) }).await.unwrap();
    expect_error_then_close(&mut dup, Code::DuplicateSession).await;
    let sessions = gw.get_json("/v1/sessions/alice").await;
    assert_eq!(sessions[0]["session_id"], info.session_id);
    old.heartbeat().await.unwrap();
    assert!(matches!(old.recv_timeout(T).await, Ok((_, Message::HeartbeatAck))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_is_delivered_acked_or_offline() {
    let gw = TestGateway::start(|_| {}).await;
    let (mut acker, _) = gw.login("acker", None).await;
    let (mut lazy, _) = gw.login("lazy", None).await;

    let (status, r) =
        gw.post("/v1/push", json!({"uids": ["acker", "nobody"], "payload": "hello", "from": "svc"})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["results"][0]["status"], "delivered");
    assert_eq!(r["results"][1]["status"], "offline");
    let (id, from, payload) = expect_push(&mut acker).await;
    assert_eq!((id, from.as_str(), payload.as_slice()), (r["push_id"].as_u64().unwrap(), "svc", &b"hello"[..]));

    // wait_ack: the caller learns the client acknowledged.
    let pusher = {
        let http = gw.http.clone();
        let url = format!("{}/v1/push", gw.api);
        tokio::spawn(async move {
            let body = json!({"uids": ["acker"], "payload_b64": "AAEC", "wait_ack": true, "timeout_ms": 5000});
            http.post(url).json(&body).send().await.unwrap().json::<serde_json::Value>().await.unwrap()
        })
    };
    let (id, _, payload) = expect_push(&mut acker).await;
    assert_eq!(payload, vec![0, 1, 2]);
    acker.send(Message::PushAck { push_id: id }).await.unwrap();
    let r = pusher.await.unwrap();
    assert_eq!(r["results"][0]["status"], "acked", "{r}");

    // A client that reads but never acks: written, then the ack wait times out.
    let (_, r) =
        gw.post("/v1/push", json!({"uids": ["lazy"], "payload": "p", "wait_ack": true, "timeout_ms": 300})).await;
    assert_eq!(r["results"][0]["status"], "timeout", "{r}");
    expect_push(&mut lazy).await;
    assert_eq!(gw.metric("gateway_pushes_total{result=\"acked\"}").await, 1);
    assert_eq!(gw.metric("gateway_pushes_total{result=\"offline\"}").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_api_rejects_bad_requests_with_messages() {
    let gw = TestGateway::start(|_| {}).await;
    for (body, needle) in [
        (json!({"uids": [], "payload": "x"}), "empty"),
        (json!({"uids": ["a"]}), "missing payload"),
        (json!({"uids": ["a"], "payload": "x", "payload_b64": "eA=="}), "only one"),
        (json!({"uids": ["a"], "payload_b64": "!!"}), "base64"),
        (json!({"uids": ["a b"], "payload": "x"}), "invalid uid"),
        (json!({"uids": ["a"], "payload": "x", "bogus": 1}), "bogus"),
        (json!({"uids": ["a"], "payload": "x", "timeout_ms": 0}), "timeout_ms"),
    ] {
        let (status, r) = gw.post("/v1/push", body.clone()).await;
        assert!((400..500).contains(&status), "{body} -> {status}");
        let msg = r["error"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{body} -> {msg:?} should mention {needle:?}");
    }
    let (status, r) = gw.post("/v1/push", json!({"uids": ["a"], "payload": "x".repeat(70_000)})).await;
    assert_eq!(status, 413, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_session() {
    let gw = TestGateway::start(|_| {}).await;
    let mut clients = Vec::new();
    for uid in ["a", "b", "c"] {
        clients.push(gw.login(uid, None).await.0);
    }
    let (status, r) = gw.post("/v1/broadcast", json!({"payload": "all hands"})).await;
    assert_eq!(status, 200);
    assert_eq!(r["queued"], 3, "{r}");
    for c in &mut clients {
        let (id, _, payload) = expect_push(c).await;
        assert_eq!(id, r["push_id"].as_u64().unwrap());
        assert_eq!(payload, b"all hands");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_while_others_keep_receiving() {
    let gw = TestGateway::start(|c| {
        c.session.max_frame_bytes = 16 * 1024;
        c.session.outbound_queue_bytes = 64 * 1024;
        c.session.write_stall_timeout = "3s".into();
    })
    .await;
    let (_slow, _) = gw.login("slow", None).await; // never reads again
    let (mut good, _) = gw.login("good", None).await;
    let chunk = "z".repeat(15 * 1024);
    let mut saw_slow = false;
    // Kernel buffers on loopback absorb several MB first; bounded loop.
    for i in 0..4000 {
        let (_, r) = gw.post("/v1/push", json!({"uids": ["slow"], "payload": chunk, "timeout_ms": 50})).await;
        let s = r["results"][0]["status"].as_str().unwrap_or_default().to_string();
        if s == "slow" {
            saw_slow = true;
            break;
        }
        assert!(["delivered", "timeout"].contains(&s.as_str()), "push {i}: {r}");
        if i % 50 == 0 {
            // The good client is never held up by the slow one.
            let (_, r) = gw.post("/v1/push", json!({"uids": ["good"], "payload": format!("tick {i}")})).await;
            assert_eq!(r["results"][0]["status"], "delivered", "{r}");
            let (_, _, p) = expect_push(&mut good).await;
            assert_eq!(p, format!("tick {i}").as_bytes());
        }
    }
    assert!(saw_slow, "the outbound queue bound was never hit");
    gw.wait_metric("gateway_slow_consumer_disconnects_total", |v| v == 1).await;
    let deadline = std::time::Instant::now() + T;
    while gw.get_json("/v1/sessions/slow").await != json!([]) {
        assert!(std::time::Instant::now() < deadline, "slow session still registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, r) = gw.post("/v1/push", json!({"uids": ["good", "slow"], "payload": "after"})).await;
    assert_eq!(r["results"][0]["status"], "delivered");
    assert_eq!(r["results"][1]["status"], "offline");
    let (_, _, p) = expect_push(&mut good).await;
    assert_eq!(p, b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_send_between_two_clients() {
    let gw = TestGateway::start(|_| {}).await;
    let (mut alice, _) = gw.login("alice", None).await;
    let (mut bob, _) = gw.login("bob", None).await;
    let seq = alice.send(Message::Send { to: "bob".into(), payload: b"hi bob".to_vec().into() }).await.unwrap();
    let (_, from, payload) = expect_push(&mut bob).await;
    assert_eq!((from.as_str(), payload.as_slice()), ("alice", &b"hi bob"[..]));
    match alice.recv_timeout(T).await.unwrap() {
        (s, Message::SendAck { code, .. }) => assert_eq!((s, code), (seq, 0), "SEND_ACK ok echoes the seq"),
        other => panic!("expected SEND_ACK, got {other:?}"),
    }
    let seq = alice.send(Message::Send { to: "carol".into(), payload: b"anyone?".to_vec().into() }).await.unwrap();
    match alice.recv_timeout(T).await.unwrap() {
        (s, Message::SendAck { code, .. }) => assert_eq!((s, code), (seq, Code::TargetOffline as u16)),
        other => panic!("expected SEND_ACK target_offline, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_answer_becomes_the_send_ack() {
    use axum::{routing::post, Json, Router};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let seen2 = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |Json(v): Json<serde_json::Value>| {
            let seen = seen2.clone();
            async move {
                let reject = v["to"] == "blocked";
                seen.lock().await.push(v);
                if reject {
                    Json(json!({"code": 42, "message": "not allowed"}))
                } else {
                    Json(json!({"code": 0, "message": "stored", "payload_b64": "b2s="}))
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let gw = TestGateway::start(|c| c.upstream.webhook_url = format!("http://{hook}/hook")).await;
    let (mut alice, info) = gw.login("alice", Some("phone")).await;
    let seq = alice.send(Message::Send { to: "room-1".into(), payload: b"hello".to_vec().into() }).await.unwrap();
    match alice.recv_timeout(T).await.unwrap() {
        (s, Message::SendAck { code, message, payload }) => {
            assert_eq!((s, code, message.as_str(), &payload[..]), (seq, 0, "stored", &b"ok"[..]));
        }
        other => panic!("expected SEND_ACK, got {other:?}"),
    }
    alice.send(Message::Send { to: "blocked".into(), payload: b"x".to_vec().into() }).await.unwrap();
    match alice.recv_timeout(T).await.unwrap() {
        (_, Message::SendAck { code, message, .. }) => {
            assert_eq!(code, Code::Rejected as u16);
            assert!(message.contains("not allowed"), "{message}");
        }
        other => panic!("expected SEND_ACK rejected, got {other:?}"),
    }
    let seen = seen.lock().await;
    assert_eq!(seen[0]["uid"], "alice");
    assert_eq!(seen[0]["device"], "phone");
    assert_eq!(seen[0]["session_id"], info.session_id);
    assert_eq!(seen[0]["seq"], seq);
    assert_eq!(seen[0]["payload_b64"], "aGVsbG8=");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_clients_why_and_stops_accepting() {
    let mut gw = TestGateway::start(|c| c.shutdown.grace = "3s".into()).await;
    let addr = gw.gw().addr;
    let (mut c, _) = gw.login("alice", None).await;
    let stop = tokio::time::timeout(Duration::from_secs(6), gw.stop());
    let (stopped, msg) = tokio::join!(stop, c.recv_timeout(T));
    assert!(stopped.is_ok(), "shutdown must finish within its grace");
    match msg {
        Ok((_, Message::Close { code, .. })) => assert_eq!(code, Code::ShuttingDown as u16),
        other => panic!("expected CLOSE shutting_down, got {other:?}"),
    }
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener must be closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderly_close_and_a_failed_handshake_affect_nobody_else() {
    let gw = TestGateway::start(|_| {}).await;
    let (mut keep, _) = gw.login("keep", None).await;
    // Garbage instead of a TLS ClientHello.
    let mut raw = tokio::net::TcpStream::connect(gw.gw().addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(T, tokio::io::AsyncReadExt::read(&mut raw, &mut buf)).await;
    gw.wait_metric("gateway_tls_handshake_failures_total", |v| v == 1).await;
    let (c, _) = gw.login("leaver", None).await;
    c.close().await.expect("orderly close");
    keep.heartbeat().await.unwrap();
    assert!(matches!(keep.recv_timeout(T).await, Ok((_, Message::HeartbeatAck))));
    gw.wait_metric("gateway_connections", |v| v == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acking_a_burst_of_pushes_is_not_rate_limited() {
    // Default packet rate: 100 frames/s per connection.
    let gw = TestGateway::start(|_| {}).await;
    let (mut c, _) = gw.login("busy", None).await;
    for i in 0..300 {
        let (_, r) = gw.post("/v1/push", json!({"uids": ["busy"], "payload": format!("m{i}")})).await;
        assert_eq!(r["results"][0]["status"], "delivered", "push {i}: {r}");
    }
    for _ in 0..300 {
        let (id, _, _) = expect_push(&mut c).await;
        c.send(Message::PushAck { push_id: id }).await.unwrap();
    }
    // Still connected and not throttled: a heartbeat is answered normally.
    let seq = c.heartbeat().await.unwrap();
    match c.recv_timeout(T).await {
        Ok((s, Message::HeartbeatAck)) => assert_eq!(s, seq),
        other => panic!("expected HEARTBEAT_ACK after acking 300 pushes, got {other:?}"),
    }
    assert_eq!(gw.metric("gateway_push_acks_total{result=\"other\"}").await, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_tls_engine_serves_the_same_protocol() {
    // The default engine is `lean`; `buffered` (tokio-rustls) is the fallback.
    let gw = TestGateway::start(|c| c.tls.engine = "buffered".into()).await;
    let (mut a, _) = gw.login("alice", None).await;
    let (mut b, _) = gw.login("bob", None).await;
    let seq = a.heartbeat().await.unwrap();
    assert!(matches!(a.recv_timeout(T).await, Ok((s, Message::HeartbeatAck)) if s == seq));
    let (_, r) = gw.post("/v1/push", json!({"uids": ["bob"], "payload": "x".repeat(40_000)})).await;
    assert_eq!(r["results"][0]["status"], "delivered", "{r}");
    let (_, _, p) = expect_push(&mut b).await;
    assert_eq!(p.len(), 40_000);
    a.send(Message::Send { to: "bob".into(), payload: b"hi".to_vec().into() }).await.unwrap();
    let (_, from, _) = expect_push(&mut b).await;
    assert_eq!(from, "alice");
    a.close().await.expect("orderly close");
}
