//! Child processes with a one-line message per step.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Prints one progress line.
pub fn step(msg: &str) {
    eprintln!("xtask: {msg}");
}

/// Runs `c` with inherited output; fails with `what` and the exit status.
pub fn run(what: &str, c: &mut Command) -> Result<()> {
    step(what);
    let status = c.status().with_context(|| format!("{what}: cannot start {:?}", c.get_program()))?;
    if !status.success() {
        bail!("{what}: {:?} exited with {status}", c.get_program());
    }
    Ok(())
}

/// Runs `c` quietly and returns stdout; None when it cannot start or fails.
pub fn output(c: &mut Command) -> Option<String> {
    let out = c.stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cargo` in `dir`, for the stable userspace build.
pub fn cargo(dir: &Path) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(dir);
    c
}

/// `cargo +nightly` in `dir`, with the variables a parent cargo/rustup set
/// for the stable toolchain removed so they cannot leak into the BPF build.
pub fn nightly_cargo(dir: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly").current_dir(dir);
    for v in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO",
    ] {
        c.env_remove(v);
    }
    c
}
