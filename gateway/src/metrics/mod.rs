//! Counters and gauges, rendered in the Prometheus text format.
//!
//! Plain atomics with fixed label sets: incrementing one is a single relaxed
//! add on the hot path, and the label values are the stable names from
//! [`crate::protocol::Code`] and the enums below.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A counter with a fixed, small set of label values.
pub struct Labeled<const N: usize> {
    label: &'static str,
    values: [&'static str; N],
    counts: [AtomicU64; N],
}

impl<const N: usize> Labeled<N> {
    pub const fn new(label: &'static str, values: [&'static str; N]) -> Self {
        Labeled { label, values, counts: [const { AtomicU64::new(0) }; N] }
    }

    pub fn inc(&self, value: &str) {
        self.add(value, 1);
    }

    pub fn add(&self, value: &str, n: u64) {
        // Unknown values land in the last slot ("other"), never panic.
        let i = self.values.iter().position(|v| *v == value).unwrap_or(N - 1);
        self.counts[i].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, value: &str) -> u64 {
        self.values.iter().position(|v| *v == value).map_or(0, |i| self.counts[i].load(Ordering::Relaxed))
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (v, c) in self.values.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}{{{}=\"{v}\"}} {}", self.label, c.load(Ordering::Relaxed));
        }
    }
}

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub struct Metrics {
    /// Open sockets, logged in or not.
    pub connections_open: Gauge,
    /// Sockets not yet past LOGIN (handshaking or waiting for the frame).
    pub connections_prelogin: Gauge,
    pub connections_accepted: Counter,
    /// Sockets closed at accept, by reason.
    pub connections_refused: Labeled<6>,
    pub accept_errors: Counter,
    pub tls_handshake_failures: Counter,
    pub logins: Labeled<9>,
    pub heartbeats: Counter,
    pub heartbeat_timeouts: Counter,
    pub pushes: Labeled<8>,
    pub push_acks: Labeled<2>,
    pub frames_rejected: Labeled<9>,
    pub slow_consumer_disconnects: Counter,
    pub sends: Labeled<8>,
    pub kicks: Labeled<4>,
    /// Detector verdicts by detector name (see `crate::abuse::detector`).
    pub abuse_hits: Labeled<7>,
    /// Bans made by detectors.
    pub auto_bans: Counter,
    /// Ban changes that could not be applied to the kernel or saved.
    pub ban_apply_errors: Counter,
    /// Refusals at the global cap that got a "busy" reply (vs. a bare close).
    pub busy_replies: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections_open: Gauge::default(),
            connections_prelogin: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Labeled::new(
                "reason",
                ["blacklisted", "capacity", "conn_rate", "per_source_open", "per_source_prelogin", "other"],
            ),
            accept_errors: Counter::default(),
            tls_handshake_failures: Counter::default(),
            logins: Labeled::new(
                "result",
                [
                    "ok",
                    "token_invalid",
                    "token_expired",
                    "bad_identity",
                    "duplicate_session",
                    "timeout",
                    "protocol",
                    "banned",
                    "other",
                ],
            ),
            heartbeats: Counter::default(),
            heartbeat_timeouts: Counter::default(),
            pushes: Labeled::new(
                "result",
                ["delivered", "acked", "queued", "offline", "slow", "timeout", "closed", "other"],
            ),
            push_acks: Labeled::new("result", ["matched", "other"]),
            frames_rejected: Labeled::new(
                "code",
                [
                    "bad_version",
                    "unknown_op",
                    "frame_too_large",
                    "malformed",
                    "bad_flags",
                    "not_logged_in",
                    "already_logged_in",
                    "unexpected_op",
                    "other",
                ],
            ),
            slow_consumer_disconnects: Counter::default(),
            sends: Labeled::new(
                "result",
                [
                    "ok",
                    "target_offline",
                    "target_slow",
                    "upstream_error",
                    "upstream_timeout",
                    "upstream_busy",
                    "rejected",
                    "other",
                ],
            ),
            kicks: Labeled::new("reason", ["duplicate_login", "kicked_by_admin", "banned", "other"]),
            abuse_hits: Labeled::new(
                "detector",
                [
                    "conn_rate",
                    "per_source_open",
                    "per_source_prelogin",
                    "global_cap",
                    "packet_rate_drop",
                    "packet_rate_disconnect",
                    "other",
                ],
            ),
            auto_bans: Counter::default(),
            ban_apply_errors: Counter::default(),
            busy_replies: Counter::default(),
        }
    }
}

impl Metrics {
    /// Render everything; `extra` lets other modules (sessions, XDP) append their own lines.
    pub fn render(&self, sessions: usize, extra: &str) -> String {
        let mut o = String::with_capacity(4096);
        let gauge = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(&mut o, "gateway_connections", "Open client sockets.", self.connections_open.get());
        gauge(&mut o, "gateway_connections_prelogin", "Sockets not yet logged in.", self.connections_prelogin.get());
        gauge(&mut o, "gateway_sessions", "Logged-in sessions in the registry.", sessions as u64);
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(&mut o, "gateway_connections_accepted_total", "Sockets accepted.", self.connections_accepted.get());
        self.connections_refused.render(&mut o, "gateway_connections_refused_total", "Sockets closed at accept.");
        counter(
            &mut o,
            "gateway_accept_errors_total",
            "accept() errors (EMFILE and friends).",
            self.accept_errors.get(),
        );
        counter(
            &mut o,
            "gateway_tls_handshake_failures_total",
            "Failed TLS handshakes.",
            self.tls_handshake_failures.get(),
        );
        self.logins.render(&mut o, "gateway_logins_total", "LOGIN attempts by result.");
        counter(&mut o, "gateway_heartbeats_total", "HEARTBEAT frames received.", self.heartbeats.get());
        counter(
            &mut o,
            "gateway_heartbeat_timeouts_total",
            "Sessions closed for silence.",
            self.heartbeat_timeouts.get(),
        );
        self.pushes.render(&mut o, "gateway_pushes_total", "Per-session push outcomes.");
        self.push_acks.render(&mut o, "gateway_push_acks_total", "PUSH_ACK frames received.");
        self.frames_rejected.render(&mut o, "gateway_frames_rejected_total", "Client frames answered with ERROR.");
        counter(
            &mut o,
            "gateway_slow_consumer_disconnects_total",
            "Connections closed because their outbound queue was full.",
            self.slow_consumer_disconnects.get(),
        );
        self.sends.render(&mut o, "gateway_sends_total", "Client SEND frames by result.");
        self.kicks.render(&mut o, "gateway_kicks_total", "Sessions kicked, by reason.");
        self.abuse_hits.render(
            &mut o,
            "gateway_abuse_hits_total",
            "Abuse detector verdicts (refusals, drops, disconnects), by detector.",
        );
        counter(&mut o, "gateway_auto_bans_total", "Bans made by detectors.", self.auto_bans.get());
        counter(
            &mut o,
            "gateway_ban_apply_errors_total",
            "Ban changes not applied to the kernel or not saved.",
            self.ban_apply_errors.get(),
        );
        counter(
            &mut o,
            "gateway_busy_replies_total",
            "Connections refused at listen.max_connections with a busy reply.",
            self.busy_replies.get(),
        );
        o.push_str(extra);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_and_unknown_values_go_to_other() {
        let m = Metrics::default();
        m.logins.inc("ok");
        m.logins.inc("something-new");
        let text = m.render(3, "");
        assert!(text.contains("gateway_logins_total{result=\"ok\"} 1"), "{text}");
        assert!(text.contains("gateway_logins_total{result=\"other\"} 1"), "{text}");
        assert!(text.contains("gateway_sessions 3"));
    }
}
