//! Building the XDP program. It is not a workspace member: it needs the
//! nightly toolchain, `-Z build-std=core` and the `bpfel-unknown-none` target,
//! linked by bpf-linker (see `prereqs`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{cmd, prereqs};

/// Builds `gateway-ebpf` and returns the object's path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let target_dir = root.join("target").join("ebpf");
    let mut c = cmd::nightly_cargo(&root.join("gateway-ebpf"));
    c.args(["build", "-Z", "build-std=core", "--target", "bpfel-unknown-none", "--release", "--locked", "--target-dir"])
        .arg(&target_dir)
        .env("PATH", prereqs::path_with_tools(root));
    cmd::run("building the XDP object (cargo +nightly, bpfel-unknown-none)", &mut c)?;
    let object = target_dir.join("bpfel-unknown-none").join("release").join("gateway-xdp");
    std::fs::metadata(&object).with_context(|| format!("the eBPF build succeeded but {} is missing", object.display()))?;
    Ok(object)
}
