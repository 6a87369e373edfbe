//! Bad configuration and an unreachable IMDS: a clear message naming the problem and
//! the documented exit status, before natd changes anything.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::netns::Netns;
use natd_tests::world::text;
use std::process::Command;

fn natd_with(config_text: &str, extra: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("natd.toml");
    std::fs::write(&path, config_text).unwrap();
    Command::new(natd_tests::bin("natd"))
        .arg("--config")
        .arg(&path)
        .args(extra)
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap()
}

#[test]
fn shipped_example_config_checks_ok() {
    let out = Command::new(natd_tests::bin("natd"))
        .arg("--check-config")
        .arg("--config")
        .arg(natd_tests::root().join("agent/natd.example.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn malformed_config_exits_2_naming_the_line() {
    let out = natd_with(
        "stack = \"dev\"\ninterval_secs = = 3\n",
        &["--check-config"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("natd.toml") && msg.contains("line 2"), "{msg}");
}

#[test]
fn unknown_key_exits_2_naming_the_key() {
    for args in [&["--check-config"][..], &[][..]] {
        let out = natd_with("stack = \"dev\"\nintervall_secs = 3\n", args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("intervall_secs"), "{}", text(&out));
    }
}

#[test]
fn bad_value_exits_2_naming_the_value() {
    let out = natd_with("eip_allocation_id = \"52.1.2.3\"\n", &["--check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("52.1.2.3"), "{}", text(&out));
}

#[test]
fn missing_explicit_config_exits_2() {
    let out = Command::new(natd_tests::bin("natd"))
        .args(["--config", "/nonexistent/natd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("/nonexistent/natd.toml"),
        "{}",
        text(&out)
    );
}

#[test]
fn unreachable_imds_retries_then_exits_1_saying_why() {
    // In an empty namespace nothing listens: IMDS is down.
    let ns = Netns::new("noimds");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("natd.toml");
    std::fs::write(
        &path,
        "imds_endpoint = \"http://127.0.0.1:9\"\nstartup_attempts = 2\n",
    )
    .unwrap();
    let out = ns
        .command(&natd_tests::bin("natd"))
        .arg("--config")
        .arg(&path)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("waiting for IMDS"), "retried: {msg}");
    assert!(msg.contains("cannot read instance identity"), "{msg}");
    // Nothing was configured.
    assert_eq!(ns.sh("sysctl -n net.ipv4.ip_forward").trim(), "0");
    assert!(!ns.sh("iptables-save").contains("NATD"));
}

#[test]
fn invalid_imds_endpoint_exits_2() {
    let ns = Netns::new("badimds");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("natd.toml");
    std::fs::write(&path, "imds_endpoint = \"not a uri\"\n").unwrap();
    let out = ns
        .command(&natd_tests::bin("natd"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not a uri"), "{}", text(&out));
}
