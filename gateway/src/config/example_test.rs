//! `config/gateway.toml` is documentation that ships: it must parse, validate
//! and say exactly what the built-in defaults say, or an operator who copies
//! it gets a different gateway than the docs describe.

use super::*;

const EXAMPLE: &str = include_str!("../../../config/gateway.toml");

fn example() -> Config {
    let raw = RawConfig::parse(EXAMPLE).unwrap_or_else(|e| panic!("config/gateway.toml does not parse: {e}"));
    raw.validate(&Overrides::default()).unwrap_or_else(|errs| panic!("config/gateway.toml does not validate: {errs:?}"))
}

#[test]
fn example_config_equals_the_built_in_defaults() {
    let file = example();
    let defaults = Config::defaults();
    // Config has no PartialEq (it holds nothing comparable by design); the
    // Debug form covers every field, durations and paths included.
    assert_eq!(
        format!("{file:#?}"),
        format!("{defaults:#?}"),
        "config/gateway.toml drifted from the defaults in config/raw.rs; update one of them (and docs/config.md)"
    );
}

#[test]
fn example_config_spot_checks() {
    let c = example();
    assert_eq!(c.listen.addr, "127.0.0.1:7000".parse().unwrap());
    assert_eq!(c.push_api.listen, "127.0.0.1:7080".parse().unwrap());
    assert_eq!(c.heartbeat.interval, Duration::from_secs(270));
    assert_eq!(c.heartbeat.timeout(), Duration::from_secs(570));
    assert_eq!(c.session.max_prelogin_frame_bytes, 4096);
    assert_eq!(c.session.outbound_queue_bytes, 256 * 1024);
    assert!(c.upstream.webhook_url.is_none(), "the example must use the built-in relay");
    assert!(c.auth.secret.is_none(), "the example must not ship a secret");
}

#[test]
fn example_config_names_every_section() {
    let table: toml::Table = EXAMPLE.parse().expect("valid TOML");
    for section in [
        "node",
        "listen",
        "tls",
        "auth",
        "session",
        "heartbeat",
        "push_api",
        "upstream",
        "xdp",
        "cluster",
        "shutdown",
        "log",
        "abuse",
        "bans",
        "admin",
    ] {
        assert!(table.contains_key(section), "config/gateway.toml lacks the [{section}] section");
    }
}
