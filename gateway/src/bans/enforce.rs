//! Carrying out a ban change: the kernel map (through `Defense`), sessions of
//! a banned uid, and live connections from a banned network.

use std::time::{Instant, SystemTime};

use super::model::{Ban, Change, Target};
use crate::defense::{Rule, RuleKind};
use crate::node::Node;
use crate::protocol::Code;
use crate::session::CloseReason;

/// Apply one change. Never fails: a kernel error is logged and counted, and
/// the ban stays in the store (the accept-time check reads `Defense`'s
/// mirror, which a failed kernel update leaves unchanged, so nothing is
/// enforced that the operator cannot see in `gateway_ban_apply_errors_total`).
pub fn apply(node: &Node, change: &Change, close_live: bool) {
    match change {
        // One ban per target, so a replacement is an in-place update of the
        // same rule (mode, expiry): nothing of the old one to undo.
        Change::Put { ban, .. } => put(node, ban, close_live),
        Change::Removed(ban) => {
            if let Target::Net(net) = &ban.target {
                // The same address may also be on the static `xdp.blacklist`,
                // which the config owns: lifting our ban must not lift that.
                if net.is_host() && node.config.xdp.blacklist.iter().any(|ip| crate::defense::IpNet::host(*ip) == *net)
                {
                    tracing::info!(target = %ban.target, "ban lifted; the address stays blocked by xdp.blacklist");
                    return;
                }
                match node.defense.remove_rule(*net, RuleKind::Ban) {
                    Ok(_) => {}
                    Err(e) => {
                        node.metrics.ban_apply_errors.inc();
                        tracing::warn!(target = %net, error = %e, "could not lift a ban in the kernel");
                    }
                }
            }
            tracing::info!(target = %ban.target, by = %ban.by, "ban lifted");
        }
    }
}

fn put(node: &Node, ban: &Ban, close_live: bool) {
    let reason = format!("banned: {}", ban.reason);
    match &ban.target {
        Target::Net(net) => {
            let rule = Rule {
                net: *net,
                kind: RuleKind::Ban,
                monitor: !ban.enforced(),
                // The kernel's clock is monotonic; convert at the last moment.
                expires_at: ban.remaining(SystemTime::now()).map(|d| Instant::now() + d),
            };
            if let Err(e) = node.defense.add_rule(rule) {
                node.metrics.ban_apply_errors.inc();
                tracing::warn!(target = %net, error = %e, "could not install a ban");
                return;
            }
            if ban.enforced() {
                // After the rule is in place, before the scan (see `epoch`).
                node.bans.bump_epoch();
            }
            if ban.enforced() && close_live {
                let mut closed = 0u64;
                node.registry.for_each(|s| {
                    if net.contains(s.peer.ip()) && s.outbox.close(CloseReason::Kick(Code::Banned, reason.clone())) {
                        closed += 1;
                    }
                });
                node.metrics.kicks.add(Code::Banned.name(), closed);
            }
        }
        Target::Uid(uid) => {
            if ban.enforced() {
                node.bans.bump_epoch();
                for s in node.registry.by_uid(uid) {
                    if s.outbox.close(CloseReason::Kick(Code::Banned, reason.clone())) {
                        node.metrics.kicks.inc(Code::Banned.name());
                    }
                }
            }
        }
    }
    tracing::info!(target = %ban.target, by = %ban.by, mode = %ban.mode, reason = %ban.reason, "ban in force");
}
