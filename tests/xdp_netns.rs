//! End-to-end XDP tests on a veth pair between two fresh network namespaces.
//!
//! The server side holds 192.0.2.1 (and 2001:db8::1); the client side holds
//! two IPv4 and two IPv6 addresses, one of each blacklisted. A blacklisted
//! source must not complete a TCP handshake (the SYN is dropped in XDP, so the
//! connect times out rather than being refused), the other must, and the
//! kernel counters must show the drops.
//!
//! Needs root; run through `cargo xtask test`, which builds the XDP object
//! and sets `GATEWAY_XDP_OBJECT` and `GATEWAY_BIN`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use gateway::config::{AttachMode, XdpConfig};
use gateway::defense::{Defense, Enforcement, IpNet, KernelPolicy, Options, Rule, SynLimit};
use gateway_tests::netns::{self, VethPair};
use socket2::{Domain, Socket, Type};

const SERVER_V4: &str = "192.0.2.1";
const GOOD_V4: &str = "192.0.2.2";
const BAD_V4: &str = "192.0.2.3";
const SERVER_V6: &str = "2001:db8::1";
const GOOD_V6: &str = "2001:db8::2";
const BAD_V6: &str = "2001:db8::3";

/// How long a connect may take before we call the SYN dropped. Generous for
/// the allowed side (a loaded CI box), short for the blocked side since a
/// dropped SYN never gets an answer.
const CONNECT_OK: Duration = Duration::from_secs(3);
const CONNECT_DROPPED: Duration = Duration::from_millis(700);

fn pair() -> VethPair {
    let pair = VethPair::new(SERVER_V4, &[GOOD_V4, BAD_V4, GOOD_V6, BAD_V6]);
    pair.server.ip(&["addr", "add", &format!("{SERVER_V6}/64"), "dev", &pair.server_if, "nodad"]);
    pair
}

/// Connects from `src` to `dst` inside the client namespace.
fn connect(pair: &VethPair, src: &str, dst: SocketAddr, timeout: Duration) -> Result<(), std::io::Error> {
    let src: IpAddr = src.parse().expect("test address");
    pair.client.run(move || {
        let domain = if src.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
        let s = Socket::new(domain, Type::STREAM, None)?;
        s.bind(&SocketAddr::new(src, 0).into())?;
        s.connect_timeout(&dst.into(), timeout)
    })
}

fn assert_connects(pair: &VethPair, src: &str, dst: SocketAddr, why: &str) {
    if let Err(e) = connect(pair, src, dst, CONNECT_OK) {
        panic!("{src} -> {dst} should connect ({why}), got: {e}");
    }
}

fn assert_dropped(pair: &VethPair, src: &str, dst: SocketAddr, why: &str) {
    match connect(pair, src, dst, CONNECT_DROPPED) {
        Ok(()) => panic!("{src} -> {dst} connected but should be dropped by XDP ({why})"),
        // A dropped SYN shows as a timeout; a refusal would mean the packet
        // reached the stack, which is not what we are testing.
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => panic!("{src} -> {dst}: expected a timeout from an XDP drop ({why}), got: {e}"),
    }
}

fn counters(d: &Defense) -> HashMap<&'static str, u64> {
    d.counters().into_iter().collect()
}

#[test]
fn defense_drops_blacklisted_sources_on_veth() {
    if !netns::privileged("defense_drops_blacklisted_sources_on_veth") {
        return;
    }
    let Some(object) = netns::xdp_object("defense_drops_blacklisted_sources_on_veth") else { return };
    let pair = pair();
    let v4: SocketAddr = format!("{SERVER_V4}:7443").parse().unwrap();
    let v6: SocketAddr = format!("[{SERVER_V6}]:7443").parse().unwrap();
    let cfg = XdpConfig {
        enabled: true,
        // None: the defense must find the veth that owns 192.0.2.1 itself.
        interface: None,
        attach_mode: AttachMode::Auto,
        object: Some(object),
        blacklist: vec![BAD_V4.parse().unwrap(), BAD_V6.parse().unwrap()],
        ..gateway::config::Config::defaults().xdp
    };
    let (defense, _l4, _l6) = pair.server.run(move || {
        let d = Defense::start(&cfg, v4);
        let l4 = TcpListener::bind(v4).expect("bind v4 in server netns");
        let l6 = TcpListener::bind(v6).expect("bind v6 in server netns");
        (d, l4, l6)
    });
    assert_eq!(
        defense.enforcement(),
        &Enforcement::Xdp { interface: pair.server_if.clone(), mode: "native".into() },
        "XDP should attach natively to the veth owning the listen address"
    );

    assert_connects(&pair, GOOD_V4, v4, "not blacklisted");
    assert_dropped(&pair, BAD_V4, v4, "static blacklist");
    assert_connects(&pair, GOOD_V6, v6, "not blacklisted");
    assert_dropped(&pair, BAD_V6, v6, "static blacklist, IPv6");
    let c = counters(&defense);
    assert!(c["drop_ban_exact"] >= 2, "kernel should count the dropped SYNs: {c:?}");
    assert!(c["verdict_drop"] >= c["drop_ban_exact"], "every drop has a verdict: {c:?}");
    assert!(c["pass_no_match"] >= 2, "the allowed handshakes pass unmatched: {c:?}");

    // Runtime changes reach the kernel.
    let good: IpAddr = GOOD_V4.parse().unwrap();
    defense.add(good).expect("add a ban at runtime");
    assert_dropped(&pair, GOOD_V4, v4, "banned at runtime");
    assert!(defense.remove(good).expect("remove the ban"));
    assert_connects(&pair, GOOD_V4, v4, "ban lifted");

    // CIDR ban, then an allowlist entry that wins over it.
    let cidr: IpNet = "192.0.2.0/30".parse().unwrap();
    defense.add_rule(Rule::ban(cidr)).expect("add CIDR ban");
    assert_dropped(&pair, GOOD_V4, v4, "inside the banned /30");
    let before = counters(&defense)["drop_ban_cidr"];
    assert!(before >= 1, "CIDR drops are counted: {:?}", counters(&defense));
    defense.add_rule(Rule::allow(IpNet::host(good))).expect("add allow entry");
    assert_connects(&pair, GOOD_V4, v4, "allowlist wins over the CIDR ban");
    assert_dropped(&pair, BAD_V4, v4, "still banned, not allowlisted");
    assert!(counters(&defense)["pass_allowlist"] >= 1);

    // Monitor mode: a would-drop is counted but passes.
    defense
        .add_rule(Rule { monitor: true, ..Rule::ban(IpNet::host(BAD_V6.parse().unwrap())) })
        .expect("switch to monitor");
    assert_connects(&pair, BAD_V6, v6, "monitor-mode ban only counts");
    assert!(counters(&defense)["monitor_ban_exact"] >= 1, "{:?}", counters(&defense));

    // Detaching proves it was XDP that dropped: the same source now connects.
    drop(defense);
    assert_connects(&pair, BAD_V4, v4, "program detached on drop");
}

/// Real SYNs through the veth: the limiter's port match and byte order are
/// right only if real packets hit it.
#[test]
fn syn_limiter_drops_connection_bursts_over_the_limit() {
    if !netns::privileged("syn_limiter_drops_connection_bursts_over_the_limit") {
        return;
    }
    let Some(object) = netns::xdp_object("syn_limiter_drops_connection_bursts_over_the_limit") else { return };
    let pair = pair();
    let v4: SocketAddr = format!("{SERVER_V4}:7447").parse().unwrap();
    let other: SocketAddr = format!("{SERVER_V4}:7448").parse().unwrap();
    let cfg = XdpConfig {
        enabled: true,
        interface: None,
        attach_mode: AttachMode::Auto,
        object: Some(object),
        blacklist: Vec::new(),
        ..gateway::config::Config::defaults().xdp
    };
    // Rate 0: no refill at all during the test, so the count is exact.
    let policy =
        KernelPolicy { syn_limit: Some(SynLimit { rate_per_sec: 0, burst: 3 }), ..KernelPolicy::for_port(v4.port()) };
    let opts = Options { policy, pin_dir: None };
    let (defense, _l, _o) = pair.server.run(move || {
        let d = Defense::start_with(&cfg, v4, opts);
        (d, TcpListener::bind(v4).expect("bind"), TcpListener::bind(other).expect("bind other"))
    });
    assert!(matches!(defense.enforcement(), Enforcement::Xdp { .. }), "{:?}", defense.enforcement());
    for i in 1..=3 {
        assert_connects(&pair, GOOD_V4, v4, &format!("SYN {i} of a burst of 3"));
    }
    assert_dropped(&pair, GOOD_V4, v4, "4th connection over the burst");
    assert_connects(&pair, BAD_V4, v4, "another source has its own bucket");
    assert_connects(&pair, GOOD_V4, other, "a port the gateway does not listen on is not limited");
    let c = counters(&defense);
    assert!(c["drop_syn_rate"] >= 1, "{c:?}");
}

/// A private BPF filesystem for one test, so its pins never touch the host's
/// /sys/fs/bpf. On drop: detach everything pinned, unmount, remove.
struct BpfFs {
    mount: PathBuf,
    dir: PathBuf,
}

impl BpfFs {
    fn new() -> BpfFs {
        let mount = std::env::temp_dir().join(netns::unique("gwbpf"));
        std::fs::create_dir_all(&mount).expect("mount point");
        let st =
            std::process::Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&mount).status().expect("run mount");
        assert!(st.success(), "cannot mount a BPF filesystem at {}", mount.display());
        let dir = mount.join("im-gateway").join("node-1");
        BpfFs { mount, dir }
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Defense::detach_pinned(&self.dir);
        let _ = std::process::Command::new("umount").arg(&self.mount).status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

#[test]
fn pinned_state_outlives_the_process_and_detach_removes_it() {
    if !netns::privileged("pinned_state_outlives_the_process_and_detach_removes_it") {
        return;
    }
    let Some(object) = netns::xdp_object("pinned_state_outlives_the_process_and_detach_removes_it") else { return };
    let pair = pair();
    let v4: SocketAddr = format!("{SERVER_V4}:7446").parse().unwrap();
    let v6: SocketAddr = format!("[{SERVER_V6}]:7446").parse().unwrap();
    let bpffs = BpfFs::new();
    let dir = bpffs.dir.clone();
    let cfg = |blacklist: Vec<IpAddr>| XdpConfig {
        enabled: true,
        interface: None,
        attach_mode: AttachMode::Auto,
        object: Some(object.clone()),
        blacklist,
        ..gateway::config::Config::defaults().xdp
    };
    let opts = Options { pin_dir: Some(dir.clone()), ..Options::for_listen(v4) };

    // First run: static ban on BAD_V4, runtime ban on BAD_V6.
    let (first_cfg, first_opts) = (cfg(vec![BAD_V4.parse().unwrap()]), opts.clone());
    let (first, _l4, _l6) = pair.server.run(move || {
        let d = Defense::start_with(&first_cfg, v4, first_opts);
        (d, TcpListener::bind(v4).expect("bind v4"), TcpListener::bind(v6).expect("bind v6"))
    });
    assert!(matches!(first.enforcement(), Enforcement::Xdp { .. }), "{:?}", first.enforcement());
    first.add(BAD_V6.parse().unwrap()).expect("runtime ban");
    assert_dropped(&pair, BAD_V4, v4, "static ban, first run");
    let drops_before = counters(&first)["drop_ban_exact"];
    assert!(dir.join("BAN_V4").exists(), "maps are pinned in {}", dir.display());
    drop(first);

    // The gateway is gone; the kernel still enforces both bans.
    assert_dropped(&pair, BAD_V4, v4, "pinned program outlives the process");
    assert_dropped(&pair, BAD_V6, v6, "runtime ban outlives the process");
    assert_connects(&pair, GOOD_V4, v4, "others still pass");
    let status = Defense::pinned_status(&dir).expect("read pinned status");
    assert_eq!(status.links.len(), 1, "one pinned link: {status:?}");
    assert_eq!(status.links[0].0, pair.server_if, "{status:?}");
    assert_eq!(status.exact_bans, 2, "{status:?}");
    let drops = status.counters.iter().find(|(n, _)| *n == "drop_ban_exact").map(|(_, v)| *v).unwrap_or(0);
    assert!(drops >= drops_before + 2, "kernel kept counting with no gateway running: {status:?}");

    // Second run with an empty config: the runtime ban is adopted, the link
    // reused, the counters continue.
    let (second_cfg, second_opts) = (cfg(Vec::new()), opts.clone());
    let second = pair.server.run(move || Defense::start_with(&second_cfg, v4, second_opts));
    assert!(matches!(second.enforcement(), Enforcement::Xdp { .. }), "{:?}", second.enforcement());
    let bans = second.list();
    assert!(
        bans.contains(&BAD_V6.parse().unwrap()) && bans.contains(&BAD_V4.parse().unwrap()),
        "previous state adopted: {bans:?}"
    );
    assert!(second.is_blocked(BAD_V6.parse().unwrap()), "the mirror knows adopted bans");
    assert!(
        counters(&second)["drop_ban_exact"] >= drops_before + 2,
        "pinned counters continue: {:?}",
        counters(&second)
    );
    assert!(second.remove(BAD_V4.parse().unwrap()).expect("remove adopted ban"));
    assert_connects(&pair, BAD_V4, v4, "adopted ban removed");
    assert_dropped(&pair, BAD_V6, v6, "still banned after the restart");
    drop(second);

    // `gateway xdp detach`: link and maps unpinned, program gone.
    let removed = Defense::detach_pinned(&dir).expect("detach");
    assert!(
        removed.iter().any(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("link_"))),
        "{removed:?}"
    );
    assert!(!dir.exists(), "pin folder removed");
    assert_connects(&pair, BAD_V6, v6, "program detached");
}

/// The real binary in the server namespace, configured by file.
#[test]
fn gateway_binary_enforces_static_blacklist_with_xdp() {
    if !netns::privileged("gateway_binary_enforces_static_blacklist_with_xdp") {
        return;
    }
    let Some(object) = netns::xdp_object("gateway_binary_enforces_static_blacklist_with_xdp") else { return };
    let bin = gateway_tests::harness::gateway_bin();
    let pair = pair();
    let state = std::env::temp_dir().join(netns::unique("gwstate"));
    std::fs::create_dir_all(&state).expect("state dir");
    let listen: SocketAddr = format!("{SERVER_V4}:7444").parse().unwrap();
    let config = state.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nstate_dir = {state:?}\n\n[listen]\naddr = \"{listen}\"\n\n[push_api]\nlisten = \"127.0.0.1:7445\"\n\n\
             [xdp]\nenabled = true\nattach_mode = \"auto\"\nobject = {object:?}\nblacklist = [\"{BAD_V4}\"]\n\
             drop_events = true\ndrop_events_per_sec = 10\n"
        ),
    )
    .expect("write config");

    let mut child = Guard(
        pair.server
            .command(&bin)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display())),
    );
    // Collect both output streams; look for the defense's log line.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for stream in [
        child.0.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child.0.stderr.take().map(|s| Box::new(s) as _),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    // The listener may be up a moment before the program is attached, so
    // wait for the defense's own word first; a fallback is a failure here.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log: Vec<String> = Vec::new();
    let active = loop {
        assert!(Instant::now() < deadline, "gateway never reported XDP as active; output:\n{}", log.join("\n"));
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("gateway exited early with {status}; output:\n{}", log.join("\n"));
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let found = line.contains("XDP defense active");
                let fell_back = line.contains("XDP defense unavailable");
                log.push(line);
                if found {
                    break log.last().cloned().unwrap_or_default();
                }
                assert!(!fell_back, "gateway fell back to userspace checks; output:\n{}", log.join("\n"));
            }
            Err(_) => continue,
        }
    };
    assert!(active.contains(&pair.server_if), "XDP should be on {} (owner of {listen}): {active}", pair.server_if);
    assert!(active.contains("native"), "veth supports native XDP, auto mode should pick it: {active}");

    let mut up = false;
    while Instant::now() < deadline {
        if connect(&pair, GOOD_V4, listen, Duration::from_millis(500)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    while let Ok(line) = rx.try_recv() {
        log.push(line);
    }
    assert!(up, "gateway never accepted on {listen} from {GOOD_V4}; output:\n{}", log.join("\n"));
    assert_dropped(&pair, BAD_V4, listen, "static xdp.blacklist in the config file");
    assert_connects(&pair, GOOD_V4, listen, "not blacklisted");
    // xdp.drop_events: the dropped SYNs come back as log lines from the reader.
    let wanted = format!("drop drop_ban_exact from {BAD_V4} proto 6 port");
    let events_deadline = Instant::now() + Duration::from_secs(10);
    let mut event_lines = 0;
    while Instant::now() < events_deadline && event_lines == 0 {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if line.contains(&wanted) {
                assert!(line.contains(&format!(" -> {}", listen.port())), "the event names the listening port: {line}");
                event_lines += 1;
            }
            log.push(line);
        }
    }
    assert!(event_lines > 0, "xdp.drop_events = true: expected a `{wanted}` line; output:\n{}", log.join("\n"));
    drop(child);
    let _ = std::fs::remove_dir_all(&state);
}

/// Kills the gateway when the test ends, pass or fail.
use gateway_tests::harness::ChildGuard as Guard;

#[test]
fn pins_from_another_capacity_are_replaced_not_refused() {
    if !netns::privileged("pins_from_another_capacity_are_replaced_not_refused") {
        return;
    }
    let Some(object) = netns::xdp_object("pins_from_another_capacity_are_replaced_not_refused") else { return };
    let pair = pair();
    let v4: SocketAddr = format!("{SERVER_V4}:7447").parse().unwrap();
    let bpffs = BpfFs::new();
    let dir = bpffs.dir.clone();
    // An earlier build left a ban map of another capacity pinned.
    std::fs::create_dir_all(&dir).expect("pin dir");
    {
        let mut loader = aya::EbpfLoader::new();
        loader.map_pin_path("BAN_V4", dir.join("BAN_V4")).map_max_entries("BAN_V4", 1000);
        let _old = loader.load_file(&object).expect("load the object with a smaller ban map");
    }
    assert!(dir.join("BAN_V4").exists(), "the old map is pinned");
    let cfg = XdpConfig {
        enabled: true,
        interface: None,
        attach_mode: AttachMode::Auto,
        object: Some(object),
        blacklist: vec![BAD_V4.parse().unwrap()],
        ..gateway::config::Config::defaults().xdp
    };
    let opts = Options { pin_dir: Some(dir.clone()), ..Options::for_listen(v4) };
    let (d, _l) =
        pair.server.run(move || (Defense::start_with(&cfg, v4, opts), TcpListener::bind(v4).expect("bind v4")));
    assert!(
        matches!(d.enforcement(), Enforcement::Xdp { .. }),
        "incompatible pins must be migrated, not refused: {:?}",
        d.enforcement()
    );
    assert_dropped(&pair, BAD_V4, v4, "static ban after the migration");
    assert_connects(&pair, GOOD_V4, v4, "others pass");
    drop(d);
    Defense::detach_pinned(&dir).expect("detach");
}

/// Internet checksum over `data` (ones' complement sum of 16-bit words).
fn csum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for pair in data.chunks(2) {
        let word =
            if pair.len() == 2 { u16::from_be_bytes([pair[0], pair[1]]) } else { u16::from_be_bytes([pair[0], 0]) };
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 TCP SYN from `src:sport` to `dst`, checksums filled in.
fn raw_syn(src: std::net::Ipv4Addr, sport: u16, dst: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(dst) = dst else { panic!("v4 only") };
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&(sport as u32 * 7919).to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let pseudo_sum: u32 = pseudo.chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]]) as u32).sum();
    let c = csum(&tcp, pseudo_sum);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = csum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ip
}

fn syncookies_sent(pair: &VethPair) -> u64 {
    let out = pair.server.command("cat").arg("/proc/net/netstat").output().expect("read netstat");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    assert_eq!(lines.len(), 2, "TcpExt header and values in /proc/net/netstat");
    let names: Vec<&str> = lines[0].split_whitespace().collect();
    let values: Vec<&str> = lines[1].split_whitespace().collect();
    let i = names.iter().position(|n| *n == "SyncookiesSent").expect("SyncookiesSent counter");
    values[i].parse().expect("number")
}

#[test]
fn legitimate_clients_connect_through_a_spoofed_syn_flood_with_syncookies() {
    if !netns::privileged("legitimate_clients_connect_through_a_spoofed_syn_flood_with_syncookies") {
        return;
    }
    let Some(object) = netns::xdp_object("legitimate_clients_connect_through_a_spoofed_syn_flood_with_syncookies")
    else {
        return;
    };
    let pair = pair();
    let v4: SocketAddr = format!("{SERVER_V4}:7448").parse().unwrap();
    // Server side: cookies on, a small SYN queue the flood will overflow,
    // loose reverse-path filtering (the spoofed sources have no route back),
    // and a route for them towards the client namespace, which drops the
    // SYN-ACKs (not its addresses, no forwarding) as the internet would.
    for (k, v) in [
        ("net.ipv4.tcp_syncookies", "1"),
        ("net.ipv4.tcp_max_syn_backlog", "128"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        (&format!("net.ipv4.conf.{}.rp_filter", pair.server_if), "0"),
    ] {
        let ok = pair.server.command("sysctl").args(["-qw", &format!("{k}={v}")]).status().expect("sysctl").success();
        assert!(ok, "sysctl {k}={v} in the server namespace");
    }
    pair.server.ip(&["route", "add", "10.0.0.0/8", "via", GOOD_V4]);
    let cfg = XdpConfig {
        enabled: true,
        interface: None,
        attach_mode: AttachMode::Auto,
        object: Some(object),
        blacklist: vec![BAD_V4.parse().unwrap()],
        ..gateway::config::Config::defaults().xdp
    };
    // The per-source SYN limit is on: every spoofed source is new, so each
    // first SYN passes it and lands on the SYN queue, as in a real flood.
    let policy =
        KernelPolicy { syn_limit: Some(SynLimit { rate_per_sec: 1, burst: 1 }), ..KernelPolicy::for_port(7448) };
    let opts = Options { policy, pin_dir: None };
    let (d, _listener) =
        pair.server.run(move || (Defense::start_with(&cfg, v4, opts), TcpListener::bind(v4).expect("bind")));
    assert!(matches!(d.enforcement(), Enforcement::Xdp { .. }), "{:?}", d.enforcement());
    let cookies_before = syncookies_sent(&pair);

    // 20,000 SYNs from distinct spoofed 10.x sources, sent raw from the client namespace.
    let sent = pair.client.run(move || {
        let s =
            Socket::new(Domain::IPV4, Type::RAW, Some(socket2::Protocol::from(libc::IPPROTO_RAW))).expect("raw socket");
        let mut sent = 0u32;
        for i in 0..20_000u32 {
            let src = std::net::Ipv4Addr::from(0x0a00_0000 | (i + 1));
            let pkt = raw_syn(src, 1024 + (i % 60_000) as u16, v4);
            if s.send_to(&pkt, &SocketAddr::new(v4.ip(), 0).into()).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    assert!(sent > 19_000, "flood sent only {sent} SYNs");
    // While the spoofed half-open entries fill the queue, honest clients get in.
    for _ in 0..5 {
        assert_connects(&pair, GOOD_V4, v4, "a legitimate client during a spoofed SYN flood");
    }
    assert_dropped(&pair, BAD_V4, v4, "a banned source stays dropped during the flood");
    let cookies = syncookies_sent(&pair) - cookies_before;
    assert!(cookies > 0, "the flood should have overflowed the SYN queue into syncookies");
    drop(d);
}
