//! The admin API end to end: auth, validation, bans and their effects on live
//! sessions, audit entries, and bans surviving a restart.

use std::time::Duration;

use gateway::client::ClientError;
use gateway::protocol::{Code, Message};
use gateway_tests::banharness::*;
use gateway_tests::harness::TempDir;
use serde_json::json;

const T: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_checked() {
    let state = TempDir::new("admin-auth");
    let mut n = BanNode::start(&state, |_| {}).await;
    let none = n.admin.with_token(None);
    let (s, v) = none.get("/v1/bans").await;
    assert_eq!(s, 401, "no token: {v}");
    assert!(v["error"].as_str().unwrap().contains("Bearer"), "{v}");
    let (s, _) = n.admin.with_token(Some("not-a-real-token-at-all")).get("/v1/bans").await;
    assert_eq!(s, 401, "wrong token");
    let (s, _) = none.post("/v1/bans", json!({"target": "192.0.2.1", "reason": "x"})).await;
    assert_eq!(s, 401, "no change without a token");
    assert!(n.admin.targets().await.is_empty(), "the unauthenticated add did nothing");
    let (s, _) = n.admin.with_token(Some(BOB_TOKEN)).get("/v1/bans").await;
    assert_eq!(s, 200, "a second named token works");
    // Probes need no token.
    assert_eq!(none.get("/healthz").await.0, 200);
    let (s, v) = none.get("/readyz").await;
    assert_eq!((s, v["ready"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(v["etcd"], "disabled");
    n.stop().await;
}

#[test]
fn refuses_to_start_on_a_public_address_without_tokens() {
    let mut raw = gateway::config::RawConfig::default();
    raw.admin.listen = "0.0.0.0:7081".into();
    let errs = raw.validate(&Default::default()).expect_err("must refuse");
    assert!(errs.iter().any(|e| e.key == "admin.tokens" && e.message.contains("loopback")), "{errs:?}");
    let mut raw = gateway::config::RawConfig::default();
    raw.admin.listen = "0.0.0.0:7081".into();
    let ok = raw.validate(&gateway::config::Overrides {
        admin_tokens: Some(vec!["ops:0123456789abcdef0123".into()]),
        ..Default::default()
    });
    assert!(ok.is_ok(), "tokens from the environment count: {:?}", ok.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_400_with_a_message() {
    let state = TempDir::new("admin-bad");
    let mut n = BanNode::start(&state, |_| {}).await;
    for (body, needle) in [
        (json!({"target": "300.1.2.3", "reason": "x"}), "not an address"),
        (json!({"target": "10.0.0.0/40", "reason": "x"}), "too long"),
        (json!({"target": "0.0.0.0/0", "reason": "x"}), "force"),
        (json!({"target": "::/0", "reason": "x"}), "force"),
        (json!({"target": "192.0.2.1", "reason": "x", "colour": "red"}), "unknown field"),
        (json!({"target": "192.0.2.1", "reason": "x", "by": "mallory"}), "unknown field"),
        (json!({"target": "192.0.2.1", "reason": ""}), "reason"),
        (json!({"target": "192.0.2.1", "reason": "x", "ttl": "forever"}), "ttl"),
        (json!({"target": "192.0.2.1", "reason": "x", "mode": "maybe"}), "mode"),
        (json!({"target": "uid:has space", "reason": "x"}), "uid"),
    ] {
        let (s, v) = n.admin.post("/v1/bans", body.clone()).await;
        assert_eq!(s, 400, "{body} -> {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{body}: error should mention {needle:?}: {msg}");
    }
    let (s, v) = n
        .admin
        .post(
            "/v1/bans/bulk",
            json!({"bans": [{"target": "192.0.2.1", "reason": "ok"}, {"target": "nope", "reason": "x"}]}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("bans[1]"), "{v}");
    assert!(n.admin.targets().await.is_empty(), "a bad bulk request applies nothing");
    let (s, _) = n.admin.get("/v1/bans?colour=red").await;
    assert_eq!(s, 400, "unknown query parameters are refused");
    let (s, _) = n.admin.get("/v1/bans/not-an-ip").await;
    assert_eq!(s, 400);
    let (s, _) = n.admin.delete("/v1/bans/192.0.2.200").await;
    assert_eq!(s, 404);
    // A forced /0 is accepted (in monitor mode, so this test's client is safe).
    let (s, v) =
        n.admin.post("/v1/bans", json!({"target": "::/0", "reason": "drill", "force": true, "mode": "monitor"})).await;
    assert_eq!(s, 201, "{v}");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uid_ban_kicks_live_sessions_and_refuses_logins_then_unban_restores() {
    let state = TempDir::new("admin-uid");
    let mut n = BanNode::start(&state, |_| {}).await;
    let (mut carol, _) = n.login_from("127.0.0.1", "carol").await.expect("login");
    let (mut dave, _) = n.login_from("127.0.0.1", "dave").await.expect("login");
    let (s, v) = n.admin.post("/v1/bans", json!({"target": "uid:carol", "reason": "spam", "ttl": "1h"})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["ban"]["by"], "alice");
    match carol.recv_timeout(T).await {
        Ok((_, Message::Kick { code, message })) => {
            assert_eq!(code, Code::Banned as u16);
            assert!(message.contains("spam"), "{message}");
        }
        other => panic!("expected KICK banned, got {other:?}"),
    }
    match n.login_from("127.0.0.1", "carol").await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, Code::Banned as u16),
        other => panic!("a banned uid's login must be refused with `banned`, got {:?}", other.map(|(_, i)| i)),
    }
    dave.heartbeat().await.expect("send");
    assert!(matches!(dave.recv_timeout(T).await, Ok((_, Message::HeartbeatAck))), "other uids are unaffected");
    let (s, _) = n.admin.delete("/v1/bans/uid:carol?reason=appeal%20accepted").await;
    assert_eq!(s, 200);
    n.login_from("127.0.0.1", "carol").await.expect("login after unban");
    // Kick (no ban): the session is closed, a new login works.
    let (s, v) = n.admin.post("/v1/kick", json!({"uid": "dave", "reason": "support request"})).await;
    assert_eq!((s, v["kicked"].as_u64()), (200, Some(1)), "{v}");
    assert!(
        matches!(dave.recv_timeout(T).await, Ok((_, Message::Kick { code, .. })) if code == Code::KickedByAdmin as u16)
    );
    // Every change is in the audit log with who, what and why.
    let (_, audit) = n.admin.get("/v1/audit").await;
    let entries: Vec<(String, String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["who"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
                e["target"].as_str().unwrap().into(),
                e["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    for want in [
        ("alice", "ban.add", "uid:carol", "spam"),
        ("alice", "ban.remove", "uid:carol", "appeal accepted"),
        ("alice", "kick", "uid:dave", "support request"),
    ] {
        assert!(
            entries.iter().any(|e| (e.0.as_str(), e.1.as_str(), e.2.as_str(), e.3.as_str()) == want),
            "missing {want:?} in {entries:?}"
        );
    }
    // ... and in the file, one JSON object per line.
    let file = n.config.admin.audit_file.clone();
    eventually(T, "audit file written", || {
        let file = file.clone();
        async move {
            std::fs::read_to_string(&file)
                .map(|t| t.lines().filter(|l| l.contains("\"ban.remove\"")).count() == 1)
                .unwrap_or(false)
        }
    })
    .await;
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_ban_closes_live_connections_from_that_network_only() {
    let state = TempDir::new("admin-ip");
    let mut n = BanNode::start(&state, |_| {}).await;
    let (mut bad, _) = n.login_from("127.0.3.9", "bad").await.expect("login");
    let (mut good, _) = n.login_from("127.0.4.1", "good").await.expect("login");
    let (s, v) = n.admin.post("/v1/bans", json!({"target": "127.0.3.0/24", "reason": "botnet"})).await;
    assert_eq!(s, 201, "{v}");
    assert!(matches!(bad.recv_timeout(T).await, Ok((_, Message::Kick { code, .. })) if code == Code::Banned as u16));
    assert!(n.refused_from("127.0.3.10").await, "the network is blocked at accept");
    good.heartbeat().await.expect("send");
    assert!(matches!(good.recv_timeout(T).await, Ok((_, Message::HeartbeatAck))));
    // Search and get.
    let (_, v) = n.admin.get("/v1/bans?ip=127.0.3.77").await;
    assert_eq!(v["matched"], 1, "{v}");
    let (_, v) = n.admin.get("/v1/bans?kind=uid").await;
    assert_eq!(v["matched"], 0, "{v}");
    let (s, v) = n.admin.get("/v1/bans/127.0.3.0/24").await;
    assert_eq!((s, v["reason"].as_str()), (200, Some("botnet")), "unescaped CIDR in the path works");
    let (s, _) = n.admin.get("/v1/bans/127.0.3.0%2F24").await;
    assert_eq!(s, 200, "escaped too");
    // Bulk add, then monitor mode does not block.
    let (s, v) = n
        .admin
        .post("/v1/bans/bulk", json!({"bans": [{"target": "192.0.2.1", "reason": "a"}, {"target": "127.0.5.0/24", "reason": "watch", "mode": "monitor"}]}))
        .await;
    assert_eq!((s, v["added"].as_u64()), (200, Some(2)), "{v}");
    n.login_from("127.0.5.5", "watched").await.expect("monitor mode lets connections through");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_survive_a_restart_and_expire_on_time() {
    let state = TempDir::new("admin-restart");
    let mut n = BanNode::start(&state, |_| {}).await;
    let (s, _) = n.admin.post("/v1/bans", json!({"target": "127.0.6.6", "reason": "persist me"})).await;
    assert_eq!(s, 201);
    let (s, _) = n.admin.post("/v1/bans", json!({"target": "uid:erin", "reason": "persist me too"})).await;
    assert_eq!(s, 201);
    let (s, _) = n.admin.post("/v1/bans", json!({"target": "127.0.7.7", "reason": "short", "ttl": "2s"})).await;
    assert_eq!(s, 201);
    n.stop().await;

    let mut n = BanNode::start(&state, |_| {}).await;
    assert_eq!(
        n.admin.targets().await,
        vec!["127.0.6.6", "127.0.7.7", "uid:erin"],
        "every ban is back after the restart"
    );
    assert!(n.refused_from("127.0.6.6").await, "and enforced before anything else happens");
    assert!(
        matches!(n.login_from("127.0.0.1", "erin").await, Err(ClientError::Refused { code, .. }) if code == Code::Banned as u16)
    );
    // The 2s ban lifts by itself, here and in the file.
    eventually(Duration::from_secs(6), "ttl ban expired", || async {
        !n.admin.targets().await.contains(&"127.0.7.7".to_string())
    })
    .await;
    n.login_from("127.0.7.7", "free").await.expect("expired ban no longer blocks");
    let (_, audit) = n.admin.get("/v1/audit").await;
    assert!(
        audit.as_array().unwrap().iter().any(|e| e["action"] == "ban.expire" && e["target"] == "127.0.7.7"),
        "{audit}"
    );
    n.stop().await;
    let n = BanNode::start(&state, |_| {}).await;
    assert_eq!(n.admin.targets().await, vec!["127.0.6.6", "uid:erin"]);
}
