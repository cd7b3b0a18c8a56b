//! The connection-rate auto-ban end to end *in the kernel*: the real gateway
//! binary with XDP attached in its own network namespace. A source that opens
//! connections over the rate is banned, after which its SYNs are dropped by
//! XDP (the connect times out), other sources still connect, and the kernel's
//! `drop_ban_exact` counter (read through the admin API) shows the drops.
//!
//! Needs root; run through `cargo xtask test`, which builds the XDP object
//! and sets `GATEWAY_XDP_OBJECT` and `GATEWAY_BIN`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use gateway_tests::netns::{self, VethPair};
use socket2::{Domain, Socket, Type};

const SERVER: &str = "192.0.2.1";
const GOOD: &str = "192.0.2.2";
const FLOOD: &str = "192.0.2.3";
const TOKEN: &str = "netns-test-token-0123456789";

fn connect(pair: &VethPair, src: &str, dst: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let src: IpAddr = src.parse().expect("test address");
    pair.client.run(move || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.bind(&SocketAddr::new(src, 0).into())?;
        s.connect_timeout(&dst.into(), timeout)?;
        // Held open briefly so the server counts it as a live connection.
        std::thread::sleep(Duration::from_millis(20));
        Ok(())
    })
}

/// GET an admin API path from the client namespace (plain HTTP/1.1).
fn admin_get(pair: &VethPair, addr: SocketAddr, path: &str) -> serde_json::Value {
    let p = path.to_string();
    let body = pair.client.run(move || -> std::io::Result<String> {
        let path = p;
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.bind(&SocketAddr::new(GOOD.parse().expect("ip"), 0).into())?;
        s.connect_timeout(&addr.into(), Duration::from_secs(3))?;
        let mut s: std::net::TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    });
    let body = body.unwrap_or_else(|e| panic!("admin API {path}: {e}"));
    let json = body.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("admin API {path}: not JSON ({e}): {body}"))
}

#[test]
fn conn_rate_auto_ban_is_enforced_by_xdp() {
    if !netns::privileged("conn_rate_auto_ban_is_enforced_by_xdp") {
        return;
    }
    let object = match std::env::var_os("GATEWAY_XDP_OBJECT") {
        Some(p) => PathBuf::from(p),
        // Same rule as `netns::privileged`: CI must run it, a plain
        // `cargo test` on a laptop skips it loudly.
        None if std::env::var_os("CI").is_some() => {
            panic!(
                "GATEWAY_XDP_OBJECT is not set: run these tests through `cargo xtask test`, which builds gateway-xdp.o"
            )
        }
        None => {
            println!("SKIPPED: conn_rate_auto_ban_is_enforced_by_xdp: GATEWAY_XDP_OBJECT is not set (use `cargo xtask test`)");
            return;
        }
    };
    let bin = gateway_tests::harness::gateway_bin();
    let pair = VethPair::new(SERVER, &[GOOD, FLOOD]);
    let state = std::env::temp_dir().join(netns::unique("gwabuse"));
    std::fs::create_dir_all(&state).expect("state dir");
    let listen: SocketAddr = format!("{SERVER}:7454").parse().expect("addr");
    let admin: SocketAddr = format!("{SERVER}:7456").parse().expect("addr");
    let config = state.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nstate_dir = {state:?}\n\n[listen]\naddr = \"{listen}\"\n\n[push_api]\nlisten = \"127.0.0.1:7455\"\n\n\
             [xdp]\nenabled = true\nobject = {object:?}\n\n\
             [abuse]\nconn_rate = 3\nconn_rate_window = \"30s\"\n\n\
             [admin]\nlisten = \"{admin}\"\ntokens = [{{ name = \"netns\", token = \"{TOKEN}\" }}]\n"
        ),
    )
    .expect("write config");
    let mut child = Guard(
        pair.server
            .command(&bin)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display())),
    );
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.0.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "gateway never reported XDP as active:\n{}", log.join("\n"));
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("gateway exited early with {status}:\n{}", log.join("\n"));
        }
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            assert!(!line.contains("XDP defense unavailable"), "fell back to userspace:\n{line}");
            let done = line.contains("gateway serving");
            log.push(line);
            if done && log.iter().any(|l| l.contains("XDP defense active")) {
                break;
            }
        }
    }

    for i in 0..3 {
        connect(&pair, FLOOD, listen, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connection {i} is within the rate: {e}"));
    }
    // The fourth completes its handshake in the kernel but is closed, and the
    // source is banned into the kernel map.
    let _ = connect(&pair, FLOOD, listen, Duration::from_secs(3));
    let bans = admin_get(&pair, admin, "/v1/bans?by=detector:conn_rate");
    assert_eq!(bans["matched"], 1, "{bans}");
    match connect(&pair, FLOOD, listen, Duration::from_millis(700)) {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the auto-banned source must be dropped by XDP (a timeout), got {other:?}"),
    }
    connect(&pair, GOOD, listen, Duration::from_secs(3)).expect("other sources are unaffected");
    let stats = admin_get(&pair, admin, "/v1/stats");
    assert!(stats["xdp"]["enforcement"].as_str().unwrap_or_default().starts_with("xdp"), "{stats}");
    assert!(stats["xdp"]["counters"]["drop_ban_exact"].as_u64() >= Some(1), "kernel drop counter: {stats}");
    assert_eq!(stats["auto_bans"], 1, "{stats}");
    drop(child);
    let _ = std::fs::remove_dir_all(&state);
}

use gateway_tests::harness::ChildGuard as Guard;
