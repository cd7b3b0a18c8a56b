//! Network namespaces for end-to-end tests, cleaned up by RAII (after aya's
//! `NetNsGuard`): dropping a [`NetNs`] deletes it, and with it every veth end
//! inside it, even when the test panics.
//!
//! Traffic in these tests never leaves the namespaces the test made: the
//! addresses used (192.0.2.0/24, TEST-NET-1) exist only on their veths.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether a privileged test can run. As root: true. Otherwise, under CI
/// (`CI` set) it panics, because CI must run every test; elsewhere it prints
/// `SKIPPED: <why>` and returns false.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success());
    let why = match (root, ip) {
        (true, true) => return true,
        (false, _) => "needs root (network namespaces, XDP)",
        (true, false) => "needs iproute2 (`ip`); run `cargo xtask prereqs`",
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: cannot run under CI: {why}");
    }
    println!("SKIPPED: {test}: {why}");
    false
}

/// The XDP object for a privileged test: `$GATEWAY_XDP_OBJECT`, else
/// `target/<profile>/gateway-xdp.o` (where `cargo xtask build` puts it). When
/// neither exists: under CI a panic, elsewhere `SKIPPED: ...` and None.
pub fn xdp_object(test: &str) -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("GATEWAY_XDP_OBJECT") {
        return Some(p.into());
    }
    // target/<profile>/deps/<test-exe> -> target/<profile>/gateway-xdp.o
    let beside = std::env::current_exe().ok().and_then(|e| Some(e.parent()?.parent()?.join("gateway-xdp.o")));
    if let Some(p) = beside.filter(|p| p.exists()) {
        return Some(p);
    }
    let why = "no XDP object: GATEWAY_XDP_OBJECT is unset and target/<profile>/gateway-xdp.o is missing; run `cargo xtask test` (or `cargo xtask build` first)";
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why}");
    }
    println!("SKIPPED: {test}: {why}");
    None
}

/// A fresh, unique name of at most 15 bytes (the interface name limit), so
/// tests running in parallel, and leftovers of a killed run, never collide.
pub fn unique(tag: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = format!("{tag}{}x{n}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "name {name} too long for an interface; use a shorter tag");
    name
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out =
        Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("cannot run `ip {}`: {e}", args.join(" ")));
    assert!(out.status.success(), "`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
}

pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace with `lo` up.
    pub fn new(tag: &str) -> NetNs {
        let name = unique(tag);
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// A command that runs inside this namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a new thread that has entered this namespace; sockets and
    /// interface lookups made there belong to it. Joins and returns the
    /// result (a panic in `f` is resumed here).
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/var/run/netns/{}", self.name);
        let handle = std::thread::spawn(move || {
            enter(&path);
            f()
        });
        match handle.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Like [`NetNs::run`] but does not wait: for servers.
    pub fn spawn<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> std::thread::JoinHandle<R> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

/// Moves the calling thread into the namespace pinned at `path`.
pub fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("cannot open netns {path}: {e}"));
    // SAFETY: setns with a valid namespace fd affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}) failed: {}", std::io::Error::last_os_error());
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Best effort: a failure here must not hide the test's own panic.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Two namespaces joined by a veth pair: `server` holds `server_if` with
/// `server_addr`/24, `client` holds `client_if` with every `client_addrs`/24.
pub struct VethPair {
    pub server: NetNs,
    pub client: NetNs,
    pub server_if: String,
    pub client_if: String,
}

impl VethPair {
    pub fn new(server_addr: &str, client_addrs: &[&str]) -> VethPair {
        let server = NetNs::new("gs");
        let client = NetNs::new("gc");
        let server_if = unique("vs");
        let client_if = unique("vc");
        ip(&[
            "link",
            "add",
            &server_if,
            "netns",
            server.name(),
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            client.name(),
        ]);
        server.ip(&["addr", "add", &format!("{server_addr}/24"), "dev", &server_if]);
        server.ip(&["link", "set", &server_if, "up"]);
        for a in client_addrs {
            // nodad: IPv6 addresses are usable at once instead of after DAD.
            let plen = if a.contains(':') { 64 } else { 24 };
            let mut args = vec!["addr", "add"];
            let cidr = format!("{a}/{plen}");
            args.push(&cidr);
            args.extend(["dev", client_if.as_str()]);
            if a.contains(':') {
                args.push("nodad");
            }
            client.ip(&args);
        }
        client.ip(&["link", "set", &client_if, "up"]);
        VethPair { server, client, server_if, client_if }
    }
}
