//! `cargo xtask bench`: benchmarks with their method, results printed as
//! Markdown and written under `target/bench/` (copy them into
//! `docs/BENCHMARKS.md` with the date and machine).

pub mod gateway;
pub mod xdp;

use std::path::Path;

use anyhow::{Context, Result};

/// Run the gateway benchmarks against the release binary at `gateway_bin`.
pub fn gateway(root: &Path, gateway_bin: &Path, quick: bool) -> Result<()> {
    let work = root.join("target/bench/gateway");
    let _ = std::fs::remove_dir_all(&work);
    let plan = if quick { gateway::Plan::quick() } else { gateway::Plan::full() };
    crate::cmd::step(&format!(
        "gateway bench: {} load processes x {} sessions, {} pushes",
        plan.procs, plan.per_proc, plan.push_requests
    ));
    let report = gateway::run(gateway_bin, &work, &plan)?;
    let md = gateway::markdown(&report);
    let out = root.join("target/bench/gateway.md");
    std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    println!("{md}");
    crate::cmd::step(&format!("results written to {}", out.display()));
    Ok(())
}

/// Run the XDP drop-rate benchmark with the built XDP object; `gen_object`
/// is the live-frames generator built beside it.
pub fn xdp(root: &Path, gateway_object: &Path, gen_object: &Path, quick: bool) -> Result<()> {
    crate::prereqs::apt(crate::prereqs::BENCH_APT_PACKAGES)?;
    let plan = if quick { xdp::Plan::quick() } else { xdp::Plan::full() };
    crate::cmd::step(&format!(
        "xdp bench: every variant with 10 entries, then {} exact + {} CIDR; {:.0} s per row",
        plan.full_exact,
        plan.full_cidr,
        plan.window.as_secs_f64()
    ));
    let report = xdp::run(&plan, gateway_object, gen_object)?;
    let md = xdp::markdown(&report);
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join("xdp.md");
    std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    println!("{md}");
    crate::cmd::step(&format!("results written to {}", out.display()));
    Ok(())
}
