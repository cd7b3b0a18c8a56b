//! Installing what the build and the tests need. Every step checks first and
//! says in one line what it found or did, so a second run is quick and quiet.
//!
//! - apt packages (`dpkg -s` to check; `apt-get update` once, only when
//!   something is missing);
//! - the nightly toolchain's `rust-src` (for `-Z build-std=core`);
//! - bpf-linker 0.13.0, built against the nightly toolchain's own libLLVM:
//!   cargo install needs an LLVM prefix with `lib/libLLVM.so`, so we make one
//!   under `target/tools/llvm` out of two symlinks into the nightly sysroot,
//!   and install into `target/tools` (the binary's rpath points at that
//!   prefix, so both live and die together).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd::{self, output, step};

/// Packages the test suite needs: iproute2 for network namespaces and veth
/// pairs; etcd-server for the cluster tests.
pub const APT_PACKAGES: &[&str] = &["iproute2", "etcd-server"];

/// Packages only `cargo xtask bench xdp` needs (installed by it, not by
/// `test`): the filters it compares against, and ethtool for the veth's
/// GRO switch and XDP drop counters.
pub const BENCH_APT_PACKAGES: &[&str] = &["xdp-tools", "iptables", "ipset", "nftables", "bpftool", "ethtool"];

pub const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn ensure(root: &Path) -> Result<()> {
    apt(APT_PACKAGES)?;
    rust_src()?;
    bpf_linker(root)?;
    Ok(())
}

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// Installs the missing ones among `pkgs` (one `apt-get update` first).
pub fn apt(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        step(&format!("apt packages present: {}", pkgs.join(" ")));
        return Ok(());
    }
    cmd::run(
        "apt-get update",
        Command::new("apt-get")
            .args(["update", "-q", "-o", "DPkg::Lock::Timeout=600"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    cmd::run(
        &format!("installing {}", missing.join(" ")),
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn rust_src() -> Result<()> {
    let Some(installed) =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))
    else {
        bail!("the nightly toolchain is not installed; it is needed to build the XDP program (`rustup toolchain install nightly --component rust-src`)");
    };
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        step("nightly rust-src present");
        return Ok(());
    }
    cmd::run(
        "adding rust-src to nightly",
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
    )
}

fn tools_dir(root: &Path) -> PathBuf {
    root.join("target").join("tools")
}

/// A bpf-linker that runs, with its version: ours in `target/tools/bin`
/// first, then whatever PATH has (e.g. `~/.cargo/bin`).
pub fn bpf_linker_path(root: &Path) -> Option<(PathBuf, String)> {
    let mut candidates = vec![tools_dir(root).join("bin").join("bpf-linker")];
    if let Some(p) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&p).map(|d| d.join("bpf-linker")));
    }
    candidates.into_iter().filter(|c| c.is_file()).find_map(|c| {
        let v = output(Command::new(&c).arg("--version"))?;
        Some((c, v.trim().to_string()))
    })
}

fn bpf_linker_works(root: &Path) -> Option<String> {
    bpf_linker_path(root).map(|(p, v)| format!("{v} ({})", p.display()))
}

fn bpf_linker(root: &Path) -> Result<()> {
    // XTASK_REBUILD_BPF_LINKER=1 forces a fresh install into target/tools
    // (to test this path, or to repair a linker whose libLLVM moved).
    let forced = std::env::var_os("XTASK_REBUILD_BPF_LINKER").is_some_and(|v| v == "1");
    if let Some(v) = bpf_linker_works(root).filter(|_| !forced) {
        step(&format!("{v} present"));
        return Ok(());
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("cannot ask the nightly rustc for its sysroot")?
        .trim()
        .to_string();
    let verbose = output(Command::new("rustc").args(["+nightly", "-vV"])).context("cannot run `rustc +nightly -vV`")?;
    let major = llvm_major(&verbose).context("`rustc +nightly -vV` does not say its LLVM version")?;
    let lib = Path::new(&sysroot).join("lib");
    let libllvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}; is the nightly toolchain complete?", lib.display()))?;

    let prefix = tools_dir(root).join("llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib).with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&libllvm), &link).with_context(|| format!("linking {}", link.display()))?;
    }
    cmd::run(
        &format!("installing bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} (a few minutes, once)"),
        cmd::nightly_cargo(root)
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .arg("--root")
            .arg(tools_dir(root))
            .env("LLVM_PREFIX", &prefix),
    )?;
    match bpf_linker_works(root) {
        Some(v) => {
            step(&format!("{v} installed in {}", tools_dir(root).join("bin").display()));
            Ok(())
        }
        None => bail!(
            "bpf-linker was installed but does not run; check that {} resolves",
            prefix_lib.join(&libllvm).display()
        ),
    }
}

/// "LLVM version: 22.1.4" -> 22.
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv.lines().find_map(|l| l.strip_prefix("LLVM version: "))?.split('.').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn llvm_major_from_rustc_vv() {
        assert_eq!(super::llvm_major("rustc 1.97.0-nightly\nLLVM version: 22.1.4\n"), Some(22));
        assert_eq!(super::llvm_major("rustc 1.97.0\n"), None);
    }
}
