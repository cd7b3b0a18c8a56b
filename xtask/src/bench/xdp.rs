//! XDP drop-rate benchmark: how many packets per second each filter drops on
//! the receiving end of a veth pair, for our XDP program, xdp-filter,
//! iptables (raw table, plain rules or ipset), nftables and no filter at all,
//! with a small and a large block list, in one run.
//!
//! - [`Lab`]: two network namespaces of our own (`gen`, `rx`) joined by a
//!   veth pair; dropping it deletes both namespaces (and with them every
//!   veth, XDP attachment, iptables/nft rule and ipset set made inside) and
//!   unloads xdp-filter, whose pins live in the host's bpffs.
//! - [`Generator`]: threads in `gen` run the `bench-gen` XDP program with
//!   `BPF_PROG_TEST_RUN` + `BPF_F_TEST_XDP_LIVE_FRAMES`; it returns
//!   `XDP_TX`, so the kernel transmits each copy of the template frame out
//!   of the veth. Bounded by a deadline and a per-call count.
//! - [`Topology`]: every filter is measured twice, with generator and
//!   receiver sharing both CPUs, and with the receiver on a core of its own
//!   (threaded NAPI).
//! - [`program_ns`]: the attached XDP program's own cost per frame.
//! - [`Variant`]: installs one filter in `rx`, and reads how many packets it
//!   has dropped so far (XDP: the veth's `xdp_drops`; iptables: the rule
//!   counters; nft and no filter: the veth's received packets).
//! - [`Lists`]: the block lists, random and reproducible (fixed seed): the
//!   filler entries never cover the generator's source, one extra exact entry
//!   does, so every generated packet is dropped by the last entry a linear
//!   filter would look at.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuHashMap, PerCpuValues};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader, TestRun, TestRunAttrs, TestRunOptions};
use gateway_common::{BanEntry, RuntimeConfig, Verdict, MAP_BAN_CIDR_V4, MAP_BAN_V4, MAP_CONFIG, PROGRAM_NAME};

use crate::cmd::step;

/// Source address of every generated packet (RFC 2544 benchmarking range).
const GEN_SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const RX_ADDR: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const GEN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const RX_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const GEN_IF: &str = "xbtx";
const RX_IF: &str = "xbrx";
/// Frames per `BPF_PROG_TEST_RUN` call: a few hundredths of a second at the
/// rates we see, so a stop request is noticed quickly.
const REPEAT_PER_CALL: u32 = 65_536;
/// xdp-filter's maps are compiled with this many entries and no CIDR support.
const XDP_FILTER_CAPACITY: usize = 10_000;

pub struct Plan {
    /// Counting window per measurement, after `warmup`.
    pub window: Duration,
    /// Windows per variant; the row reports their median (the VMs have
    /// noisy neighbours) and their range.
    pub windows: usize,
    pub warmup: Duration,
    /// The large list: exact entries and CIDR (/24) entries.
    pub full_exact: usize,
    pub full_cidr: usize,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            window: Duration::from_secs(5),
            windows: 3,
            warmup: Duration::from_secs(1),
            full_exact: 1_000_000,
            full_cidr: 100_000,
        }
    }
    pub fn quick() -> Plan {
        Plan {
            window: Duration::from_secs(1),
            windows: 1,
            warmup: Duration::from_millis(300),
            full_exact: 20_000,
            full_cidr: 2_000,
        }
    }
}

// ---- block lists -------------------------------------------------------------

/// `exact` includes the generator's source as its last element.
pub struct Lists {
    pub exact: Vec<Ipv4Addr>,
    /// /24 networks.
    pub cidr: Vec<Ipv4Addr>,
}

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

impl Lists {
    /// `exact` addresses in total (the last one the generator's source) and
    /// `cidr` /24 networks. The networks are drawn from 20.0.0.0-99.255.255.0
    /// and the filler addresses from 100.0.0.0-197.255.255.255, so no entry
    /// overlaps another or covers the generator (198.18.0.1) or the receiver.
    pub fn new(exact: usize, cidr: usize) -> Lists {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut seen = HashSet::with_capacity(exact + cidr);
        let mut nets = Vec::with_capacity(cidr);
        while nets.len() < cidr {
            let r = rng.next();
            let first = 20 + (r % 80) as u8;
            let n = Ipv4Addr::new(first, (r >> 8) as u8, (r >> 16) as u8, 0);
            if seen.insert(n) {
                nets.push(n);
            }
        }
        let mut addrs = Vec::with_capacity(exact);
        while addrs.len() + 1 < exact {
            let r = rng.next();
            let first = 100 + (r % 98) as u8;
            let a = Ipv4Addr::new(first, (r >> 8) as u8, (r >> 16) as u8, (r >> 24) as u8);
            if seen.insert(a) {
                addrs.push(a);
            }
        }
        addrs.push(GEN_SRC);
        Lists { exact: addrs, cidr: nets }
    }

    pub fn label(&self) -> String {
        if self.cidr.is_empty() {
            format!("{} exact", thousands(self.exact.len()))
        } else {
            format!("{} exact + {} CIDR", thousands(self.exact.len()), thousands(self.cidr.len()))
        }
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---- namespaces --------------------------------------------------------------

fn run_quiet(what: &str, c: &mut Command) -> Result<String> {
    let out = c.stdin(Stdio::null()).output().with_context(|| format!("{what}: cannot start {:?}", c.get_program()))?;
    if !out.status.success() {
        bail!("{what}: {:?} failed: {}", c.get_program(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args` with `input` on stdin.
fn run_with_input(what: &str, program: &str, args: &[&str], input: &[u8]) -> Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: cannot start {program}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).with_context(|| format!("{what}: writing to {program}"))?;
    }
    let out = child.wait_with_output().with_context(|| format!("{what}: waiting for {program}"))?;
    ensure!(out.status.success(), "{what}: {program} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

fn setns(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns with a valid namespace fd; it affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(rc == 0, "setns({}): {}", path.display(), std::io::Error::last_os_error());
    Ok(())
}

/// The veth pair in two namespaces of our own. The calling (main) thread is
/// moved into `rx` for the lab's lifetime, so the filter commands it starts
/// and the XDP attach it does land there; Drop moves it back first.
pub struct Lab {
    gen: String,
    rx: String,
    host_ns: File,
    xdp_filter_loaded: bool,
    pub cpus: usize,
}

/// Where the generator and the receiver run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One generator thread on CPU 0; the receiver's NAPI in its own kernel
    /// thread (threaded NAPI) pinned to the last CPU, so the filter under
    /// test has a core to itself and the generator offers more than any
    /// receiver can take (the veth ring drops the excess).
    Split,
    /// A generator thread on every CPU, one veth queue each; each CPU
    /// generates and receives in turn (softirq after each batch). Measures
    /// the whole machine rather than one receiving core.
    Shared,
}

impl Topology {
    /// Both are measured for every installed filter (split needs 2 CPUs).
    pub fn all(cpus: usize) -> &'static [Topology] {
        if cpus >= 2 {
            &[Topology::Shared, Topology::Split]
        } else {
            &[Topology::Shared]
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Topology::Shared => "shared",
            Topology::Split => "split",
        }
    }
    pub fn generator_threads(self, cpus: usize) -> usize {
        match self {
            Topology::Split => 1,
            Topology::Shared => cpus,
        }
    }
    pub fn describe(self, cpus: usize) -> String {
        match self {
            Topology::Split => format!("generator on CPU 0, receiver (threaded NAPI) pinned to CPU {}", cpus - 1),
            Topology::Shared => {
                format!("{cpus} generator threads, one per CPU and veth queue, each CPU also receiving")
            }
        }
    }
}

impl Lab {
    pub fn new() -> Result<Lab> {
        let tag = std::process::id();
        let host_ns = File::open("/proc/thread-self/ns/net").context("opening our own network namespace")?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let lab = Lab {
            gen: format!("xbench-gen-{tag}"),
            rx: format!("xbench-rx-{tag}"),
            host_ns,
            xdp_filter_loaded: false,
            cpus,
        };
        run_quiet("creating the generator netns", Command::new("ip").args(["netns", "add", &lab.gen]))?;
        if let Err(e) = run_quiet("creating the receiver netns", Command::new("ip").args(["netns", "add", &lab.rx])) {
            let _ = Command::new("ip").args(["netns", "del", &lab.gen]).status();
            return Err(e);
        }
        // From here on Drop cleans up.
        // One queue per CPU for the shared topology; split uses queue 0 only
        // (its generator runs on CPU 0, and veth picks the queue by CPU).
        let q = cpus.to_string();
        let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        let (gen_mac, rx_mac) = (mac(GEN_MAC), mac(RX_MAC));
        #[rustfmt::skip]
        run_quiet("creating the veth pair", Command::new("ip").args([
            "link", "add", GEN_IF, "address", &gen_mac, "numtxqueues", &q, "numrxqueues", &q, "netns", &lab.gen, "type", "veth",
            "peer", "name", RX_IF, "address", &rx_mac, "numtxqueues", &q, "numrxqueues", &q, "netns", &lab.rx,
        ]))?;
        let rx_addr = format!("{RX_ADDR}/24");
        for (ns, args) in [
            (&lab.gen, vec!["link", "set", "lo", "up"]),
            (&lab.rx, vec!["link", "set", "lo", "up"]),
            (&lab.gen, vec!["link", "set", GEN_IF, "up"]),
            (&lab.rx, vec!["addr", "add", &rx_addr, "dev", RX_IF]),
            (&lab.rx, vec!["link", "set", RX_IF, "up"]),
        ] {
            run_quiet("configuring the veth pair", Command::new("ip").arg("-n").arg(ns.as_str()).args(&args))?;
        }
        setns(&lab.ns_path(&lab.rx.clone()))?;
        // Frames sent by XDP_TX arrive through veth's ndo_xdp_xmit, which
        // needs the receiver's NAPI: an XDP program enables it, and so does
        // GRO for the netfilter variants (same path for both; GRO has
        // nothing to merge in single-frame UDP).
        run_quiet("enabling GRO on the receiver veth", Command::new("ethtool").args(["-K", RX_IF, "gro", "on"]))?;
        Ok(lab)
    }

    fn ns_path(&self, name: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(name)
    }

    pub fn gen_ns(&self) -> PathBuf {
        self.ns_path(&self.gen)
    }

    /// Sets up the receiver for `t`: threaded NAPI on and its threads
    /// (`napi/xbrx-<id>`) pinned to the last CPU for split, off for shared.
    /// Done before every measurement, as attaching or detaching XDP may
    /// re-create the NAPI contexts.
    fn set_topology(&self, t: Topology) -> Result<()> {
        let on = u8::from(t == Topology::Split);
        // sysfs shows the namespace it was mounted in: `ip netns exec` remounts it.
        run_quiet(
            "switching threaded NAPI on the receiver veth",
            Command::new("ip").args([
                "netns",
                "exec",
                &self.rx,
                "sh",
                "-c",
                &format!("echo {on} > /sys/class/net/{RX_IF}/threaded"),
            ]),
        )?;
        if t != Topology::Split {
            return Ok(());
        }
        let prefix = format!("napi/{RX_IF}-");
        let mut pinned = 0;
        for e in std::fs::read_dir("/proc").context("listing /proc")?.filter_map(|e| e.ok()) {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else { continue };
            if comm.trim_end().starts_with(&prefix) {
                set_affinity(pid, self.cpus - 1)?;
                pinned += 1;
            }
        }
        ensure!(pinned > 0, "no {prefix}* kernel thread: threaded NAPI did not take effect on {RX_IF}");
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Best effort throughout: a cleanup failure must not hide the error
        // that got us here.
        if self.xdp_filter_loaded {
            let _ = Command::new("xdp-filter").args(["unload", RX_IF]).stderr(Stdio::null()).status();
        }
        // SAFETY: setns back to the namespace we opened at the start.
        unsafe { libc::setns(self.host_ns.as_raw_fd(), libc::CLONE_NEWNET) };
        let _ = Command::new("ip").args(["netns", "del", &self.rx]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.gen]).status();
    }
}

// ---- generator ---------------------------------------------------------------

/// The template frame: Ethernet + IPv4 + UDP to a closed port, 60 bytes (the
/// minimum Ethernet frame without FCS).
fn frame() -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&RX_MAC);
    f.extend_from_slice(&GEN_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = 60 - 14;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&GEN_SRC.octets());
    ip[16..20].copy_from_slice(&RX_ADDR.octets());
    let mut sum: u32 = ip.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    let mut udp = [0u8; 8];
    udp[0..2].copy_from_slice(&9999u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&((total - 20) as u16).to_be_bytes());
    f.extend_from_slice(&udp);
    f.resize(60, 0);
    f
}

/// Generator threads, thread `i` pinned to CPU `i` so each feeds its own
/// veth queue (veth picks the queue by CPU). Stops (and joins) on drop.
pub struct Generator {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
}

impl Generator {
    pub fn start(object: &Path, gen_ns: &Path, threads_n: usize, deadline: Instant) -> Result<Generator> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        for cpu in 0..threads_n {
            let (object, gen_ns, stop, sent, ready) =
                (object.to_path_buf(), gen_ns.to_path_buf(), stop.clone(), sent.clone(), ready_tx.clone());
            threads.push(std::thread::spawn(move || -> Result<()> {
                let setup = || -> Result<(Ebpf, u32)> {
                    pin_to_cpu(cpu)?;
                    setns(&gen_ns)?;
                    let mut ebpf = Ebpf::load_file(&object).with_context(|| format!("loading {}", object.display()))?;
                    let prog: &mut Xdp = ebpf
                        .program_mut("bench_gen")
                        .context("no bench_gen program in the generator object")?
                        .try_into()?;
                    prog.load().context("loading the generator program")?;
                    let name = std::ffi::CString::new(GEN_IF)?;
                    // SAFETY: a valid C string; looks up in this thread's netns.
                    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
                    ensure!(ifindex != 0, "{GEN_IF} not found in the generator namespace");
                    Ok((ebpf, ifindex))
                };
                let (ebpf, ifindex) = match setup() {
                    Ok(v) => {
                        let _ = ready.send(Ok(()));
                        v
                    }
                    Err(e) => {
                        let _ = ready.send(Err(anyhow::anyhow!("{e:#}")));
                        return Err(e);
                    }
                };
                let prog: &Xdp = ebpf.program("bench_gen").context("bench_gen vanished")?.try_into()?;
                let data = frame();
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
                // rx_queue_index, egress_ifindex. Live frames want data_end ==
                // the frame length and the device to transmit on.
                let mut ctx = [0u8; 24];
                ctx[4..8].copy_from_slice(&(data.len() as u32).to_ne_bytes());
                ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
                while !stop.load(Ordering::Relaxed) && !INTERRUPTED.load(Ordering::Relaxed) && Instant::now() < deadline
                {
                    let opts = TestRunOptions {
                        data_in: Some(&data),
                        ctx_in: Some(&ctx),
                        repeat: REPEAT_PER_CALL,
                        attrs: TestRunAttrs::new().xdp_live_frames(64),
                        ..TestRunOptions::new()
                    };
                    match prog.test_run(opts) {
                        Ok(_) => {
                            sent.fetch_add(u64::from(REPEAT_PER_CALL), Ordering::Relaxed);
                        }
                        // A signal (e.g. SIGCHLD of a counter-reading
                        // command) cut the call short; how many frames went
                        // out is unknown, so it is not counted as sent.
                        Err(aya::programs::ProgramError::SyscallError(e))
                            if e.io_error.raw_os_error() == Some(libc::EINTR) => {}
                        Err(e) => {
                            return Err(anyhow::Error::new(e)
                                .context("BPF_PROG_TEST_RUN with live frames (kernel 5.18+ needed)"))
                        }
                    }
                }
                Ok(())
            }));
        }
        drop(ready_tx);
        let mut g = Generator { stop, sent, threads };
        for _ in 0..threads_n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    g.finish()?;
                    return Err(e.context("starting the generator"));
                }
                Err(_) => break,
            }
        }
        Ok(g)
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the threads and reports the first error any of them hit.
    pub fn finish(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            let r = t.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a generator thread panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn pin_to_cpu(cpu: usize) -> Result<()> {
    set_affinity(0, cpu)
}

/// Pins thread `tid` (0 = the calling thread) to `cpu`.
fn set_affinity(tid: i32, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        ensure!(
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0,
            "pinning thread {tid} to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

// ---- variants ----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    NoFilter,
    Gateway,
    XdpFilter,
    IptablesRaw,
    IptablesIpset,
    Nft,
}

impl Variant {
    pub const ALL: [Variant; 6] = [
        Variant::NoFilter,
        Variant::Gateway,
        Variant::XdpFilter,
        Variant::IptablesRaw,
        Variant::IptablesIpset,
        Variant::Nft,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::NoFilter => "no filter (received by the stack)",
            Variant::Gateway => "gateway XDP (native)",
            Variant::XdpFilter => "xdp-filter (native)",
            Variant::IptablesRaw => "iptables raw DROP",
            Variant::IptablesIpset => "iptables raw + ipset",
            Variant::Nft => "nft (prerouting, priority raw, sets)",
        }
    }
}

/// An installed filter; removed on drop where the namespace would not do it.
enum Installed {
    None,
    /// Owns the program and its link: dropping detaches.
    Gateway(Box<Ebpf>),
    XdpFilter,
    Netfilter(Variant),
}

/// What a variant with `lists` loaded actually holds, when it cannot hold it all.
pub fn shortfall(v: Variant, lists: &Lists) -> Option<String> {
    match v {
        Variant::XdpFilter if lists.exact.len() > XDP_FILTER_CAPACITY || !lists.cidr.is_empty() => Some(format!(
            "{} exact only: its maps hold {XDP_FILTER_CAPACITY} and it has no CIDR match",
            thousands(lists.exact.len().min(XDP_FILTER_CAPACITY))
        )),
        _ => None,
    }
}

/// Whether the variant is run at all with these lists.
pub fn applicable(v: Variant, lists: &Lists) -> bool {
    // A million linear iptables rules would take hours to load and match at
    // a few packets per second; ipset is the iptables answer for big lists.
    !(v == Variant::IptablesRaw && lists.exact.len() + lists.cidr.len() > 1_000)
}

fn install(lab: &mut Lab, v: Variant, lists: &Lists, gateway_object: &Path) -> Result<Installed> {
    match v {
        Variant::NoFilter => Ok(Installed::None),
        Variant::Gateway => install_gateway(gateway_object, lists).map(|e| Installed::Gateway(Box::new(e))),
        Variant::XdpFilter => {
            run_quiet(
                "loading xdp-filter",
                Command::new("xdp-filter").args(["load", "--mode", "native", "--features", "ipv4", RX_IF]),
            )?;
            lab.xdp_filter_loaded = true;
            fill_xdp_filter(lists)?;
            Ok(Installed::XdpFilter)
        }
        Variant::IptablesRaw => {
            let mut rules = String::from("*raw\n");
            for a in lists.exact.iter() {
                let _ = writeln!(rules, "-A PREROUTING -s {a}/32 -j DROP");
            }
            for n in lists.cidr.iter() {
                let _ = writeln!(rules, "-A PREROUTING -s {n}/24 -j DROP");
            }
            rules.push_str("COMMIT\n");
            run_with_input("loading iptables rules", "iptables-restore", &[], rules.as_bytes())?;
            Ok(Installed::Netfilter(v))
        }
        Variant::IptablesIpset => {
            let mut s = String::new();
            let _ = writeln!(
                s,
                "create xb_ip hash:ip family inet hashsize {} maxelem {}",
                lists.exact.len().next_power_of_two().max(1024),
                lists.exact.len().max(1024)
            );
            let _ = writeln!(
                s,
                "create xb_net hash:net family inet hashsize {} maxelem {}",
                lists.cidr.len().next_power_of_two().max(1024),
                lists.cidr.len().max(1024)
            );
            for a in &lists.exact {
                let _ = writeln!(s, "add xb_ip {a}");
            }
            for n in &lists.cidr {
                let _ = writeln!(s, "add xb_net {n}/24");
            }
            run_with_input("loading ipsets", "ipset", &["restore"], s.as_bytes())?;
            let rules = "*raw\n-A PREROUTING -m set --match-set xb_ip src -j DROP\n-A PREROUTING -m set --match-set xb_net src -j DROP\nCOMMIT\n";
            run_with_input("loading iptables rules", "iptables-restore", &[], rules.as_bytes())?;
            Ok(Installed::Netfilter(v))
        }
        Variant::Nft => {
            let mut s = String::from(
                "table ip xbench {\n set ban { type ipv4_addr; }\n set bannet { type ipv4_addr; flags interval; }\n \
                 chain pre { type filter hook prerouting priority raw; policy accept;\n  ip saddr @ban drop\n  ip saddr @bannet drop\n }\n}\n",
            );
            // Elements in chunks: one huge statement makes nft slow and hungry.
            for chunk in lists.exact.chunks(50_000) {
                let elems: Vec<String> = chunk.iter().map(|a| a.to_string()).collect();
                let _ = writeln!(s, "add element ip xbench ban {{ {} }}", elems.join(", "));
            }
            for chunk in lists.cidr.chunks(50_000) {
                let elems: Vec<String> = chunk.iter().map(|n| format!("{n}/24")).collect();
                let _ = writeln!(s, "add element ip xbench bannet {{ {} }}", elems.join(", "));
            }
            run_with_input("loading the nft ruleset", "nft", &["-f", "-"], s.as_bytes())?;
            Ok(Installed::Netfilter(v))
        }
    }
}

fn uninstall(lab: &mut Lab, installed: Installed) -> Result<()> {
    match installed {
        Installed::None => Ok(()),
        Installed::Gateway(ebpf) => {
            drop(ebpf);
            Ok(())
        }
        Installed::XdpFilter => {
            run_quiet("unloading xdp-filter", Command::new("xdp-filter").args(["unload", RX_IF]))?;
            lab.xdp_filter_loaded = false;
            Ok(())
        }
        Installed::Netfilter(Variant::Nft) => {
            run_quiet("removing the nft table", Command::new("nft").args(["delete", "table", "ip", "xbench"])).map(drop)
        }
        Installed::Netfilter(_) => {
            run_quiet("flushing iptables raw", Command::new("iptables").args(["-t", "raw", "-F", "PREROUTING"]))?;
            // Sets only go once no rule references them.
            for set in ["xb_ip", "xb_net"] {
                let _ = Command::new("ipset").args(["destroy", set]).stderr(Stdio::null()).status();
            }
            Ok(())
        }
    }
}

/// Our program, loaded straight from the object (not through the gateway's
/// loader, whose maps are sized for production) with the two ban maps sized
/// to the lists, filled, then attached in native mode.
fn install_gateway(object: &Path, lists: &Lists) -> Result<Ebpf> {
    let exact_cap = (lists.exact.len() as u32).max(gateway_common::BAN_EXACT_CAPACITY);
    let cidr_cap = (lists.cidr.len() as u32).max(gateway_common::BAN_CIDR_CAPACITY);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(MAP_BAN_V4, exact_cap)
        .map_max_entries(MAP_BAN_CIDR_V4, cidr_cap)
        .load_file(object)
        .with_context(|| format!("loading {}", object.display()))?;
    {
        let prog: &mut Xdp =
            ebpf.program_mut(PROGRAM_NAME).context("no gateway_xdp program in the object")?.try_into()?;
        prog.load().context("verifying gateway_xdp")?;
    }
    {
        let mut cfg: Array<_, RuntimeConfig> = Array::try_from(ebpf.map_mut(MAP_CONFIG).context("no CONFIG map")?)?;
        // The gateway's default policy: malformed frames drop, the rest pass.
        cfg.set(0, RuntimeConfig { malformed_verdict: Verdict::Drop as u32, ..RuntimeConfig::default() }, 0)?;
    }
    {
        let mut ban: HashMap<_, u32, BanEntry> = HashMap::try_from(ebpf.map_mut(MAP_BAN_V4).context("no BAN_V4 map")?)?;
        for a in &lists.exact {
            ban.insert(u32::from_ne_bytes(a.octets()), BanEntry::enforce(), 0).context("filling BAN_V4")?;
        }
    }
    {
        let mut cidr: LpmTrie<_, [u8; 4], BanEntry> =
            LpmTrie::try_from(ebpf.map_mut(MAP_BAN_CIDR_V4).context("no BAN_CIDR_V4 map")?)?;
        for n in &lists.cidr {
            cidr.insert(&Key::new(24, n.octets()), BanEntry::enforce(), 0).context("filling BAN_CIDR_V4")?;
        }
    }
    let prog: &mut Xdp = ebpf.program_mut(PROGRAM_NAME).context("no gateway_xdp program")?.try_into()?;
    prog.attach(RX_IF, XdpMode::Driver).context("attaching gateway_xdp to the receiver veth in native mode")?;
    Ok(ebpf)
}

/// xdp-filter's CLI adds one address per process; its pinned per-CPU hash
/// is filled directly instead (value 1 = "match source", as the CLI writes).
fn fill_xdp_filter(lists: &Lists) -> Result<()> {
    let path = "/sys/fs/bpf/xdp-filter/filter_ipv4";
    let data = MapData::from_pin(path).with_context(|| format!("opening xdp-filter's map {path}"))?;
    let mut map: PerCpuHashMap<_, u32, u64> = PerCpuHashMap::try_from(Map::PerCpuHashMap(data))?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting possible CPUs")?;
    // The generator's source (last) must be in, whatever the capacity.
    let n = lists.exact.len();
    let take = n.min(XDP_FILTER_CAPACITY);
    for a in lists.exact[n - take..].iter() {
        let v = PerCpuValues::try_from(vec![1u64; cpus])?;
        map.insert(u32::from_ne_bytes(a.octets()), v, 0).context("filling xdp-filter's filter_ipv4")?;
    }
    Ok(())
}

/// Frames the receiving veth has taken in (`/proc/net/dev` of this thread's
/// namespace).
fn rx_packets() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/net/dev").context("reading /proc/thread-self/net/dev")?;
    let line = s
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{RX_IF}:")))
        .context("receiver veth not in /proc/net/dev")?;
    let fields: Vec<&str> = line.split(':').nth(1).unwrap_or("").split_whitespace().collect();
    fields.get(1).and_then(|p| p.parse().ok()).context("parsing rx packets in /proc/net/dev")
}

/// Packets dropped (or, with no filter, received) so far.
fn dropped(v: Variant) -> Result<u64> {
    match v {
        // nft: every generated frame matches the drop rule, so what the veth
        // received is what nft dropped. Its own counters cannot be sampled
        // around a window: `nft list` fetches the whole table, tens of
        // seconds with a million set elements.
        Variant::NoFilter | Variant::Nft => rx_packets(),
        Variant::Gateway | Variant::XdpFilter => {
            let s = run_quiet("reading veth statistics", Command::new("ethtool").args(["-S", RX_IF]))?;
            Ok(s.lines()
                .filter_map(|l| l.trim().split_once(':'))
                .filter(|(k, _)| k.starts_with("rx_queue_") && k.ends_with("_xdp_drops"))
                .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
                .sum())
        }
        Variant::IptablesRaw | Variant::IptablesIpset => {
            let s = run_quiet("reading iptables counters", Command::new("iptables-save").args(["-c", "-t", "raw"]))?;
            // Lines look like "[pkts:bytes] -A PREROUTING ...".
            Ok(s.lines()
                .filter(|l| l.starts_with('[') && l.contains("-j DROP"))
                .filter_map(|l| l[1..].split(':').next()?.parse::<u64>().ok())
                .sum())
        }
    }
}

/// The attached XDP program's own run time per frame, without the veth and
/// the generator: `bpftool prog run` (BPF_PROG_TEST_RUN, not live) on the
/// template frame. Steadier than the drop rate on a noisy VM, and says
/// where a difference between two XDP variants comes from.
fn program_ns(frame_file: &Path) -> Result<f64> {
    let link = run_quiet("reading the receiver's XDP program", Command::new("ip").args(["-j", "link", "show", RX_IF]))?;
    let v: serde_json::Value = serde_json::from_str(&link).context("parsing `ip -j link show`")?;
    let xdp = &v[0]["xdp"];
    let id = xdp["prog"]["id"]
        .as_u64()
        .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64())
        .context("no XDP program attached to the receiver veth")?;
    let mut best = f64::MAX;
    // Best of three: interference only ever adds time.
    for _ in 0..3 {
        let out = Command::new("bpftool")
            .args(["prog", "run", "id", &id.to_string(), "data_in"])
            .arg(frame_file)
            .args(["repeat", "2000000"])
            .stdin(Stdio::null())
            .output()
            .context("running bpftool")?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let ns = text
            .split("duration (average): ")
            .nth(1)
            .and_then(|t| t.split("ns").next())
            .and_then(|n| n.trim().parse::<f64>().ok())
            .with_context(|| format!("bpftool prog run printed no duration: {}", text.trim()))?;
        best = best.min(ns);
    }
    Ok(best)
}

/// Set by SIGINT/SIGTERM: the run stops at the next check and unwinds, so
/// the lab's guard still removes namespaces, rules and xdp-filter's pins.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn check_interrupted() -> Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::Relaxed), "interrupted; the lab has been cleaned up");
    Ok(())
}

// ---- the run -----------------------------------------------------------------

pub struct Row {
    pub topology: Topology,
    pub variant: Variant,
    pub entries: String,
    pub note: Option<String>,
    /// Median over the windows, and the lowest and highest window.
    pub mpps: f64,
    pub range: (f64, f64),
    /// Seconds it took to load the rules.
    pub load_secs: f64,
    /// XDP variants: the program's run time per frame (see [`program_ns`]).
    pub prog_ns: Option<f64>,
    /// Frames the generator sent per second during the window.
    pub offered_mpps: f64,
    /// Index of the iptables baseline row with the same lists.
    pub baseline: Option<usize>,
}

pub struct Report {
    pub rows: Vec<Row>,
    pub cpus: usize,
    pub window: Duration,
    pub windows: usize,
}

pub fn run(plan: &Plan, gateway_object: &Path, gen_object: &Path) -> Result<Report> {
    let sets = [Lists::new(10, 0), Lists::new(plan.full_exact, plan.full_cidr)];
    catch_signals();
    let mut lab = Lab::new()?;
    let frame_file = std::env::temp_dir().join(format!("xbench-frame-{}", std::process::id()));
    std::fs::write(&frame_file, frame()).with_context(|| format!("writing {}", frame_file.display()))?;
    let result = run_in(plan, &mut lab, &frame_file, &sets, gateway_object, gen_object);
    let _ = std::fs::remove_file(&frame_file);
    result
}

fn run_in(
    plan: &Plan,
    lab: &mut Lab,
    frame_file: &Path,
    sets: &[Lists],
    gateway_object: &Path,
    gen_object: &Path,
) -> Result<Report> {
    let topologies = Topology::all(lab.cpus);
    let mut rows: Vec<Row> = Vec::new();
    for lists in sets {
        let first = rows.len();
        for v in Variant::ALL {
            if !applicable(v, lists) {
                continue;
            }
            check_interrupted()?;
            step(&format!("xdp bench: {} with {}", v.name(), lists.label()));
            let t = Instant::now();
            let installed =
                install(lab, v, lists, gateway_object).with_context(|| format!("installing {}", v.name()))?;
            let load_secs = t.elapsed().as_secs_f64();
            step(&format!("  loaded in {load_secs:.1} s"));
            let prog_ns = match v {
                Variant::Gateway | Variant::XdpFilter => match program_ns(&frame_file) {
                    Ok(ns) => Some(ns),
                    Err(e) => {
                        let _ = uninstall(lab, installed);
                        return Err(e.context(format!("timing {}", v.name())));
                    }
                },
                _ => None,
            };
            // Every topology on the same installed filter, so a big list is
            // loaded once.
            let mut measured = Vec::new();
            for &topo in topologies {
                match measure(plan, lab, topo, v, gen_object) {
                    Ok(samples) => measured.push((topo, samples)),
                    Err(e) => {
                        let _ = uninstall(lab, installed);
                        return Err(e.context(format!("measuring {} ({})", v.name(), topo.name())));
                    }
                }
            }
            uninstall(lab, installed).with_context(|| format!("removing {}", v.name()))?;
            for (topology, samples) in measured {
                let mut drops: Vec<f64> = samples.iter().map(|s| s.0).collect();
                drops.sort_by(f64::total_cmp);
                let mut offered: Vec<f64> = samples.iter().map(|s| s.1).collect();
                offered.sort_by(f64::total_cmp);
                let (mpps, offered_mpps) = (drops[drops.len() / 2], offered[offered.len() / 2]);
                let range = (drops[0], drops[drops.len() - 1]);
                step(&format!(
                    "  {}: {mpps:.2} Mpps dropped (windows {drops:.2?}; {offered_mpps:.2} Mpps offered)",
                    topology.name()
                ));
                rows.push(Row {
                    topology,
                    variant: v,
                    entries: lists.label(),
                    note: shortfall(v, lists),
                    mpps,
                    range,
                    offered_mpps,
                    load_secs,
                    prog_ns,
                    baseline: None,
                });
            }
        }
        for &topo in topologies {
            let group: Vec<usize> = (first..rows.len()).filter(|&i| rows[i].topology == topo).collect();
            let base = group
                .iter()
                .copied()
                .find(|&i| rows[i].variant == Variant::IptablesRaw)
                .or_else(|| group.iter().copied().find(|&i| rows[i].variant == Variant::IptablesIpset));
            for i in group {
                rows[i].baseline = base;
            }
        }
    }
    Ok(Report { rows, cpus: lab.cpus, window: plan.window, windows: plan.windows })
}

/// Runs the generator for warmup + `windows` windows and returns, per
/// window, (dropped, offered) in Mpps.
fn measure(plan: &Plan, lab: &Lab, t: Topology, v: Variant, gen_object: &Path) -> Result<Vec<(f64, f64)>> {
    let total = plan.warmup + plan.window * plan.windows as u32;
    let deadline = Instant::now() + total + Duration::from_secs(5);
    lab.set_topology(t)?;
    let mut g = Generator::start(gen_object, &lab.gen_ns(), t.generator_threads(lab.cpus), deadline)?;
    std::thread::sleep(plan.warmup);
    let mut samples = Vec::with_capacity(plan.windows);
    let (mut d0, mut s0, mut t0) = (dropped(v)?, g.sent(), Instant::now());
    for _ in 0..plan.windows {
        std::thread::sleep(plan.window);
        check_interrupted()?;
        let (d1, s1, t1) = (dropped(v)?, g.sent(), Instant::now());
        let secs = (t1 - t0).as_secs_f64();
        samples.push(((d1.saturating_sub(d0)) as f64 / secs / 1e6, (s1.saturating_sub(s0)) as f64 / secs / 1e6));
        (d0, s0, t0) = (d1, s1, t1);
    }
    g.finish()?;
    Ok(samples)
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    for &topo in Topology::all(r.cpus) {
        let _ = writeln!(s, "**{}** ({}):\n", topo.name(), topo.describe(r.cpus));
        let _ = writeln!(s, "| variant | entries loaded | Mpps dropped (median) | min–max | vs iptables raw | offered Mpps | load s | XDP prog ns/frame |");
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
        for row in r.rows.iter().filter(|row| row.topology == topo) {
            let rel = match row.baseline {
                Some(b) if r.rows[b].mpps > 0.0 => format!("{:.2}×", row.mpps / r.rows[b].mpps),
                _ => "–".to_string(),
            };
            let entries = match &row.note {
                Some(n) => format!("{} ({n})", row.entries),
                None => row.entries.clone(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {:.2}–{:.2} | {} | {:.2} | {:.1} | {} |",
                row.variant.name(),
                entries,
                row.mpps,
                row.range.0,
                row.range.1,
                rel,
                row.offered_mpps,
                row.load_secs,
                row.prog_ns.map_or("–".to_string(), |n| format!("{n:.0}"))
            );
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "Median of {} windows of {:.0} s per row. \"XDP prog ns/frame\": the attached program alone under `bpftool prog run` (best of 3 × 2M runs). \"vs iptables raw\" is against plain rules with the small list and iptables + ipset with the large one, in the same topology. \"no filter\" counts frames the receiving veth handed to the stack (which drops them: UDP to a closed port).",
        r.windows,
        r.window.as_secs_f64()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_distinct_and_spare_the_generator() {
        let l = Lists::new(5_000, 500);
        assert_eq!((l.exact.len(), l.cidr.len()), (5_000, 500));
        assert_eq!(l.exact.last(), Some(&GEN_SRC), "the generator's source is the last exact entry");
        let covered = |a: &Ipv4Addr| l.cidr.iter().any(|n| n.octets()[..3] == a.octets()[..3]);
        assert!(!l.exact.iter().any(covered), "no exact entry lies inside a CIDR entry");
        assert_eq!(l.exact.iter().collect::<HashSet<_>>().len(), 5_000, "exact entries are distinct");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn frame_has_a_valid_ipv4_checksum() {
        let f = frame();
        assert_eq!(f.len(), 60);
        let mut sum: u32 = f[14..34].chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff, "header checksum verifies");
    }
}
