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

#[test]
fn bad_probe_targets_are_refused_at_start_naming_the_key() {
    // Each of these passed --check-config once and then failed every pass, which in an
    // Auto Scaling group means a replacement loop.
    for target in [
        "http://host:80",
        "name with spaces:80",
        "host:0",
        "192.0.2.10:0",
        "192.0.2.10:65536",
        "192.0.2.10",
        "example.com:443",
        "[2001:db8::1]:443",
        "0.0.0.0:80",
    ] {
        let config = format!("probe_targets = [\"192.0.2.10:443\", \"{target}\"]\n");
        for args in [&["--check-config"][..], &["--once"][..]] {
            let out = natd_with(&config, args);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{target} {args:?}: {}",
                text(&out)
            );
            let msg = text(&out);
            assert!(
                msg.contains("probe_targets") && msg.contains(target),
                "{target}: {msg}"
            );
        }
    }
    let ok = natd_with(
        "probe_targets = [\"192.0.2.10:443\", \"127.0.0.1:9\"]\n",
        &["--check-config"],
    );
    assert!(ok.status.success(), "{}", text(&ok));
}

#[test]
fn out_of_range_durations_are_refused_naming_the_key() {
    for (text_in, key) in [
        ("interval_secs = 50000\n", "interval_secs"),
        ("interval_secs = 0\n", "interval_secs"),
        ("interval_secs = 61\n", "interval_secs"),
        ("probe_timeout_ms = 600000\n", "probe_timeout_ms"),
        ("probe_timeout_ms = 0\n", "probe_timeout_ms"),
        ("unhealthy_after = 1000\n", "unhealthy_after"),
        ("startup_attempts = 100000\n", "startup_attempts"),
        ("control_deadline_secs = 36000\n", "control_deadline_secs"),
        (
            "control_backoff_max_secs = 86400\n",
            "control_backoff_max_secs",
        ),
        (
            "interval_secs = 2\nprobe_timeout_ms = 5000\nprobe_targets = [\"192.0.2.10:443\"]\n",
            "probe_timeout_ms",
        ),
        ("metrics_file = \"relative/metrics.prom\"\n", "metrics_file"),
    ] {
        let out = natd_with(text_in, &["--check-config"]);
        assert_eq!(out.status.code(), Some(2), "{text_in}: {}", text(&out));
        let msg = text(&out);
        assert!(msg.contains(key), "{text_in}: {msg}");
        assert!(
            msg.contains("between") || msg.contains("shorter") || msg.contains("absolute"),
            "the message says what is allowed: {msg}"
        );
    }
}

#[test]
fn no_ca_certificates_exits_2_saying_what_to_install_before_changing_anything() {
    // An empty trust store (rustls-native-certs reads SSL_CERT_FILE instead of the
    // system's when it is set), in an empty namespace.
    let ns = Netns::new("nocas");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("natd.toml");
    std::fs::write(&path, "imds_endpoint = \"http://127.0.0.1:9\"\n").unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let out = ns
        .command(&natd_tests::bin("natd"))
        .arg("--config")
        .arg(&path)
        .env("SSL_CERT_FILE", &empty)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("SSL_CERT_DIR")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(msg.contains("no CA certificates"), "{msg}");
    assert!(msg.contains("install ca-certificates"), "{msg}");
    assert!(!msg.contains("panicked"), "{msg}");
    assert_eq!(ns.sh("sysctl -n net.ipv4.ip_forward").trim(), "0");
}
