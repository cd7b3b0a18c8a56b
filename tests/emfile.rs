//! Running out of file descriptors must not spin the accept loop or hurt
//! sessions that already exist. This file is its own test binary (its own
//! process), because it lowers the process's descriptor limit.

use std::time::Duration;

use gateway::protocol::Message;
use gateway_tests::harness::TestGateway;

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").expect("procfs").count() as u64
}

fn set_soft_nofile(n: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a stack struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let old = lim.rlim_cur;
        lim.rlim_cur = n;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0, "lowering RLIMIT_NOFILE");
        old
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emfile_backs_off_and_existing_sessions_keep_working() {
    let gw = TestGateway::start(|_| {}).await;
    let (mut alice, _) = gw.login("alice", None).await;
    // Warm the HTTP client's connection so reading metrics needs no new fd.
    let errors_before = gw.metric("gateway_accept_errors_total").await;

    let old = set_soft_nofile(open_fds() + 12);
    let mut held = Vec::new();
    for _ in 0..40 {
        match std::net::TcpStream::connect(gw.gw().addr) {
            Ok(s) => held.push(s),
            Err(_) => break, // this process is out of descriptors too
        }
    }
    // Connections wait in the backlog; every accept now fails with EMFILE.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e1 = gw.metric("gateway_accept_errors_total").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let e2 = gw.metric("gateway_accept_errors_total").await;
    assert!(e1 > errors_before, "accept should have hit EMFILE (errors {errors_before} -> {e1}, held {})", held.len());
    assert!(e2 - e1 < 30, "accept loop must back off, not spin: {} errors in 600 ms", e2 - e1);

    // The existing session is unaffected while descriptors are exhausted.
    alice.heartbeat().await.unwrap();
    assert!(matches!(alice.recv_timeout(Duration::from_secs(5)).await, Ok((_, Message::HeartbeatAck))));

    drop(held);
    set_soft_nofile(old);
    // Once descriptors free up, new clients get in again (after at most one backoff step).
    let (mut bob, _) =
        tokio::time::timeout(Duration::from_secs(10), gw.login("bob", None)).await.expect("login after recovery");
    bob.heartbeat().await.unwrap();
    assert!(matches!(bob.recv_timeout(Duration::from_secs(5)).await, Ok((_, Message::HeartbeatAck))));
}
