//! Building the XDP program. It is not a workspace member: it needs the
//! nightly toolchain, `-Z build-std=core` and the `bpfel-unknown-none` target,
//! linked by bpf-linker (see `prereqs`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{cmd, prereqs};

/// Builds `gateway-ebpf` and returns the object's path.
pub fn build(root: &Path) -> Result<PathBuf> {
    let target_dir = root.join("target").join("ebpf");
    // The linker by absolute path: rustup puts ~/.cargo/bin first on PATH for
    // everything cargo runs, so a stale bpf-linker there would win over the
    // one `prereqs` verified or built.
    let (linker, _) = prereqs::bpf_linker_path(root).context("no working bpf-linker; run `cargo xtask prereqs`")?;
    let mut c = cmd::nightly_cargo(&root.join("gateway-ebpf"));
    c.args([
        "build",
        "-Z",
        "build-std=core",
        "--target",
        "bpfel-unknown-none",
        "--release",
        "--locked",
        "--target-dir",
    ])
    .arg(&target_dir)
    .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker);
    cmd::run("building the XDP object (cargo +nightly, bpfel-unknown-none)", &mut c)?;
    let object = objects_dir(root).join("gateway-xdp");
    std::fs::metadata(&object)
        .with_context(|| format!("the eBPF build succeeded but {} is missing", object.display()))?;
    Ok(object)
}

fn objects_dir(root: &Path) -> PathBuf {
    root.join("target").join("ebpf").join("bpfel-unknown-none").join("release")
}

/// The live-frames generator of `cargo xtask bench xdp`, built by [`build`]
/// from the same crate (a second `[[bin]]`).
pub fn bench_gen_object(root: &Path) -> PathBuf {
    objects_dir(root).join("bench-gen")
}
