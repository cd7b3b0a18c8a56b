//! Project automation: `cargo xtask <command>`.
//!
//! - `prereqs`: installs what builds and tests need (apt packages, nightly
//!   rust-src, bpf-linker), each step skipped when already satisfied.
//! - `build`: the userspace workspace and the XDP object, copied to
//!   `target/<profile>/gateway-xdp.o` beside the gateway binary.
//! - `run`: build, then `gateway serve` with built-in defaults.
//! - `test`: prereqs, build, then `cargo test --workspace` with
//!   `GATEWAY_XDP_OBJECT` and `GATEWAY_BIN` pointing at the built artifacts.
//!
//! Module map: [`prereqs`] installs, [`ebpf`] builds the XDP object, [`cmd`]
//! runs child processes with one-line progress messages.

mod bench;
mod cmd;
mod ebpf;
mod prereqs;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, run and test the gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install missing build/test prerequisites (idempotent).
    Prereqs,
    /// Build the gateway and the XDP object.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `gateway serve` with built-in defaults plus ARGS.
    Run {
        #[arg(long)]
        release: bool,
        /// Passed to `gateway serve` after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmarks (release build); see docs/BENCHMARKS.md for the method.
    Bench {
        /// Which suite: `gateway` (memory per session, login rate, push) or
        /// `xdp` (drop rate of our XDP program vs xdp-filter, iptables, nft).
        #[arg(default_value = "gateway")]
        suite: String,
        /// Smaller, faster run (a smoke test of the bench itself).
        #[arg(long)]
        quick: bool,
    },
    /// Prereqs, build, then `cargo test --workspace` (ARGS go to cargo test).
    Test {
        #[arg(long)]
        release: bool,
        #[arg(last = true)]
        args: Vec<String>,
    },
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// What a build produced.
struct Artifacts {
    gateway: PathBuf,
    xdp_object: PathBuf,
}

fn profile_dir(release: bool) -> &'static str {
    if release {
        "release"
    } else {
        "debug"
    }
}

fn build(release: bool) -> Result<Artifacts> {
    let root = root();
    let object = ebpf::build(&root).context("building the XDP program (gateway-ebpf)")?;

    let mut c = cmd::cargo(&root);
    c.args(["build", "--workspace", "--bins"]);
    if release {
        c.arg("--release");
    }
    cmd::run("building the gateway", &mut c)?;

    let out = root.join("target").join(profile_dir(release));
    let dest = out.join("gateway-xdp.o");
    std::fs::copy(&object, &dest).with_context(|| format!("copying {} to {}", object.display(), dest.display()))?;
    cmd::step(&format!("XDP object at {}", dest.display()));
    Ok(Artifacts { gateway: out.join("gateway"), xdp_object: dest })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Prereqs => prereqs::ensure(&root()),
        Command::Build { release } => build(release).map(|_| ()),
        Command::Run { release, args } => {
            prereqs::ensure(&root())?;
            let a = build(release)?;
            let mut c = std::process::Command::new(&a.gateway);
            c.arg("serve").args(&args).env("GATEWAY_XDP_OBJECT", &a.xdp_object);
            cmd::step(&format!("running {} serve {}", a.gateway.display(), args.join(" ")));
            let status = c.status().with_context(|| format!("starting {}", a.gateway.display()))?;
            anyhow::ensure!(status.success(), "gateway exited with {status}");
            Ok(())
        }
        Command::Bench { suite, quick } => {
            let root = root();
            prereqs::ensure(&root)?;
            match suite.as_str() {
                "gateway" => {
                    let a = build(true)?;
                    bench::gateway(&root, &a.gateway, quick)
                }
                // Needs only the eBPF objects (always built in release), not the gateway.
                "xdp" => {
                    let object = ebpf::build(&root).context("building the XDP program (gateway-ebpf)")?;
                    bench::xdp(&root, &object, &ebpf::bench_gen_object(&root), quick)
                }
                other => anyhow::bail!("unknown bench suite {other:?}; known: gateway, xdp"),
            }
        }
        Command::Test { release, args } => {
            let root = root();
            prereqs::ensure(&root)?;
            let a = build(release)?;
            let mut c = cmd::cargo(&root);
            // --no-fail-fast: one failing crate must not hide the results of the others.
            c.args(["test", "--workspace", "--no-fail-fast"]);
            if release {
                c.arg("--release");
            }
            c.args(&args).env("GATEWAY_XDP_OBJECT", &a.xdp_object).env("GATEWAY_BIN", &a.gateway);
            cmd::run("running the test suite", &mut c)
        }
    }
}
