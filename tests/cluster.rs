//! Two gateway nodes sharing a real etcd: a ban made on one is enforced by
//! the other within a second, expiry lifts it on both, and a node keeps
//! enforcing (and later publishes) bans while etcd is down.

use std::time::{Duration, Instant};

use gateway::client::ClientError;
use gateway::protocol::{Code, Message};
use gateway_tests::banharness::*;
use gateway_tests::etcd::Etcd;
use gateway_tests::harness::TempDir;
use serde_json::json;

const PREFIX: &str = "/gateway/bans/";

async fn node(state: &TempDir, id: &str, etcd: &Etcd) -> BanNode {
    let endpoint = etcd.endpoint.clone();
    let id = id.to_string();
    let n = BanNode::start(state, move |c| {
        c.node.id = id;
        c.cluster.etcd_endpoints = vec![endpoint];
    })
    .await;
    eventually(Duration::from_secs(10), "node in sync with etcd", || async {
        let (_, v) = n.admin.get("/readyz").await;
        v["etcd"] == "connected"
    })
    .await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ban_on_one_node_is_enforced_by_the_other_and_expiry_lifts_it_on_both() {
    let etcd = Etcd::start().await;
    let (sa, sb) = (TempDir::new("cluster-a"), TempDir::new("cluster-b"));
    let mut a = node(&sa, "node-a", &etcd).await;
    let mut b = node(&sb, "node-b", &etcd).await;

    let (mut frank_on_b, _) = b.login_from("127.0.0.1", "frank").await.expect("login on b");
    b.login_from("127.0.8.8", "before").await.expect("not banned yet");

    let made = Instant::now();
    let (s, v) = a.admin.post("/v1/bans", json!({"target": "127.0.8.0/24", "reason": "botnet", "ttl": "3s"})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["replicated"], true, "{v}");
    let (s, _) = a.admin.post("/v1/bans", json!({"target": "uid:frank", "reason": "fraud"})).await;
    assert_eq!(s, 201);

    eventually(Duration::from_secs(1), "node b has both bans within a second", || async {
        b.admin.targets().await == vec!["127.0.8.0/24".to_string(), "uid:frank".to_string()]
    })
    .await;
    let lag = made.elapsed();
    assert!(b.refused_from("127.0.8.9").await, "b drops the banned network (ban made on a)");
    assert!(a.refused_from("127.0.8.9").await, "and so does a");
    b.login_from("127.0.9.9", "bystander").await.expect("other sources unaffected on b");
    // The uid ban made on a kicks frank's live session on b.
    match frank_on_b.recv_timeout(Duration::from_secs(5)).await {
        Ok((_, Message::Kick { code, .. })) => assert_eq!(code, Code::Banned as u16),
        other => panic!("expected KICK banned on node b, got {other:?}"),
    }
    assert!(
        matches!(b.login_from("127.0.0.1", "frank").await, Err(ClientError::Refused { code, .. }) if code == Code::Banned as u16)
    );
    let (_, ban) = b.admin.get("/v1/bans/127.0.8.0/24").await;
    assert_eq!(ban["by"], "alice", "who made it travels with the ban: {ban}");

    // Expiry (3s) lifts the network ban on both nodes, and etcd drops the key.
    eventually(Duration::from_secs(6), "expired on a", || async {
        !a.admin.targets().await.contains(&"127.0.8.0/24".to_string())
    })
    .await;
    eventually(Duration::from_secs(2), "expired on b", || async {
        !b.admin.targets().await.contains(&"127.0.8.0/24".to_string())
    })
    .await;
    a.login_from("127.0.8.9", "after-a").await.expect("lifted on a");
    b.login_from("127.0.8.9", "after-b").await.expect("lifted on b");
    eventually(Duration::from_secs(8), "etcd lease removed the key", || async {
        etcd.keys(PREFIX).await == vec![format!("{PREFIX}uid:frank")]
    })
    .await;

    // Unban on b lifts it on a.
    let (s, _) = b.admin.with_token(Some(BOB_TOKEN)).delete("/v1/bans/uid:frank?reason=appeal").await;
    assert_eq!(s, 200);
    eventually(Duration::from_secs(1), "unban reached a", || async { a.admin.targets().await.is_empty() }).await;
    a.login_from("127.0.0.1", "frank").await.expect("frank may log in on a again");
    eprintln!("replication lag for the first ban: {lag:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_outage_keeps_enforcement_and_local_bans_reach_the_cluster_later() {
    let mut etcd = Etcd::start().await;
    let (sa, sb) = (TempDir::new("cluster-out-a"), TempDir::new("cluster-out-b"));
    let mut a = node(&sa, "node-a", &etcd).await;
    let mut b = node(&sb, "node-b", &etcd).await;
    let (s, _) = a.admin.post("/v1/bans", json!({"target": "127.0.10.1", "reason": "before outage"})).await;
    assert_eq!(s, 201);
    eventually(Duration::from_secs(1), "replicated", || async { b.admin.targets().await.len() == 1 }).await;

    etcd.kill();
    eventually(Duration::from_secs(10), "b notices the outage", || async {
        let (_, v) = b.admin.get("/readyz").await;
        v["etcd"] == "disconnected"
    })
    .await;
    let (s, v) = b.admin.get("/readyz").await;
    assert_eq!(s, 200, "etcd down is not a reason to be unready: {v}");
    assert!(b.refused_from("127.0.10.1").await, "b keeps enforcing its last-known list");
    // A ban made during the outage applies locally at once...
    let (s, v) = b.admin.post("/v1/bans", json!({"target": "127.0.10.2", "reason": "during outage"})).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["replicated"], false);
    assert!(b.refused_from("127.0.10.2").await);
    // ... survives a restart of b while etcd is still down ...
    b.stop().await;
    let mut b = BanNode::start_config(b.config.clone()).await;
    assert!(
        b.refused_from("127.0.10.1").await && b.refused_from("127.0.10.2").await,
        "restart with etcd down loses nothing"
    );

    // ... and reaches a once etcd is back.
    etcd.restart().await;
    eventually(Duration::from_secs(15), "the outage ban reached node a", || async {
        a.admin.targets().await == vec!["127.0.10.1".to_string(), "127.0.10.2".to_string()]
    })
    .await;
    assert!(a.refused_from("127.0.10.2").await);
    a.stop().await;
    b.stop().await;
}
