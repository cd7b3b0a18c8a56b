//! `gateway doctor --apply` inside a network namespace: the settings it
//! checks are per namespace, so the test changes nothing on the host.

use gateway_tests::netns::{self, NetNs};

fn sysctl_in(ns: &NetNs, name: &str) -> String {
    let out = ns.command("sysctl").args(["-n", name]).output().expect("sysctl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn doctor_reports_then_applies_inside_a_namespace_only() {
    if !netns::privileged("doctor_reports_then_applies_inside_a_namespace_only") {
        return;
    }
    let bin = gateway_tests::harness::gateway_bin();
    let ns = NetNs::new("doctor");
    // Start from values the doctor must flag.
    for (k, v) in [("net.ipv4.tcp_synack_retries", "5"), ("net.ipv4.tcp_max_syn_backlog", "256")] {
        let ok = ns.command("sysctl").args(["-qw", &format!("{k}={v}")]).status().expect("sysctl -w").success();
        assert!(ok, "setting {k} inside the namespace");
    }
    let host_retries = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_synack_retries").unwrap();

    let check = ns.command(&bin).arg("doctor").output().expect("gateway doctor");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "doctor must fail while settings are off:\n{text}");
    assert!(text.contains("FIX  net.ipv4.tcp_synack_retries") && text.contains("is 5"), "{text}");
    assert!(text.contains("FIX  net.ipv4.tcp_max_syn_backlog"), "{text}");

    let apply = ns.command(&bin).args(["doctor", "--apply"]).output().expect("gateway doctor --apply");
    let text = String::from_utf8_lossy(&apply.stdout);
    assert!(apply.status.success(), "apply should fix everything:\n{text}\n{}", String::from_utf8_lossy(&apply.stderr));
    assert_eq!(sysctl_in(&ns, "net.ipv4.tcp_synack_retries"), "2");
    assert_eq!(sysctl_in(&ns, "net.ipv4.tcp_max_syn_backlog"), "8192");
    assert_eq!(sysctl_in(&ns, "net.ipv4.tcp_syncookies"), "1");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_synack_retries").unwrap(),
        host_retries,
        "the host's own setting must not change"
    );
}
