//! The IM edge gateway as a library.
//!
//! How the pieces fit (sans-IO cores first, tokio shells after):
//!
//! - [`protocol`]: wire format v1 — frame header, ops, error codes, the
//!   tokio-util codec with its size limits, and typed message bodies.
//! - [`config`]: the typed, fully validated configuration.
//! - [`auth`]: JWT verification for LOGIN and minting of dev tokens.
//! - [`registry`]: the sharded uid(+device) <-> connection map.
//! - [`heartbeat`]: the liveness wheel that finds silent connections.
//! - [`session`]: one connection's task: TLS handshake, login, frames, writes.
//! - [`server`]: listeners, the accept loop and shutdown.
//! - [`api`]: the internal HTTP push API and `/metrics`.
//! - [`upstream`]: where client SEND frames go (webhook or built-in relay).
//! - [`defense`]: the XDP program's maps and the accept-time fallback.
//! - [`client`]: the reference client used by tests and `gateway client`.
//! - [`metrics`]: counters rendered in the Prometheus text format.
//! - [`abuse`]: detectors (connection rate, packet rate, per-source limits).
//! - [`bans`]: the ban model, its durable store, etcd replication, enforcement.
//! - [`admin`]: the admin API for security staff, with its audit log.
//! - [`tls`] and [`state`]: certificates and the node's state directory.

pub mod abuse;
pub mod admin;
pub mod api;
pub mod auth;
pub mod bans;
pub mod client;
pub mod config;
pub mod defense;
pub mod doctor;
pub mod heartbeat;
pub mod load;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod push;
pub mod registry;
pub mod server;
pub mod session;
pub mod state;
pub mod tls;
pub mod upstream;
