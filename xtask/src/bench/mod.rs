//! `cargo xtask bench`: benchmarks with their method, results printed as
//! Markdown and written under `target/bench/` (copy them into
//! `docs/BENCHMARKS.md` with the date and machine).

pub mod gateway;

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
