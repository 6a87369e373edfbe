//! natctl's read-only commands, driven as a user runs them.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::world::text;
use std::process::Command;

fn natctl(args: &[&str]) -> std::process::Output {
    Command::new(natd_tests::bin("natctl"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn policy_is_natds_contract() {
    let out = natctl(&["policy", "--stack", "dev"]);
    assert!(out.status.success(), "{}", text(&out));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, natd::contract::agent_policy("dev"));
}

#[test]
fn cost_compares_dev_and_prod_with_stated_prices() {
    let out = natctl(&[
        "cost",
        "--azs",
        "3",
        "--gb-per-month",
        "200",
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (dev, prod) = (
        v["dev"]["total_usd"].as_f64().unwrap(),
        v["prod"]["total_usd"].as_f64().unwrap(),
    );
    // prod: 3 gateways + 3 addresses + 200 GB processing
    let want_prod = 3.0 * 0.045 * 730.0 + 3.0 * 0.005 * 730.0 + 200.0 * 0.045;
    assert!((prod - want_prod).abs() < 1e-6, "{prod} vs {want_prod}");
    assert!(
        dev < prod / 5.0,
        "dev {dev} should be a fraction of prod {prod}"
    );
    assert_eq!(v["prices"]["nat_gateway_hour"], 0.045);

    let text_out = natctl(&["cost", "--env", "dev", "--price", "instance_hour=0.0042"]);
    let t = text(&text_out);
    assert!(text_out.status.success(), "{t}");
    assert!(
        t.contains("dev *") && t.contains("instance_hour=0.0042"),
        "{t}"
    );
}

#[test]
fn cost_rejects_bad_input_naming_it() {
    for (args, needle) in [
        (&["cost", "--price", "nat_hour=1"][..], "nat_hour"),
        (&["cost", "--price", "instance_hour=cheap"][..], "cheap"),
        (&["cost", "--azs", "0"][..], "0"),
        (&["cost", "--env", "staging"][..], "staging"),
    ] {
        let out = natctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(needle), "{args:?}: {}", text(&out));
    }
}

#[test]
fn completions_and_man_page_are_generated() {
    let bash = natctl(&["completions", "bash"]);
    assert!(bash.status.success() && String::from_utf8_lossy(&bash.stdout).contains("natctl"));
    let man = natctl(&["man"]);
    assert!(
        String::from_utf8_lossy(&man.stdout).contains(".TH natctl"),
        "{}",
        text(&man)
    );
}
