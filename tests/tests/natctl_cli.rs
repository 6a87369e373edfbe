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

/// natctl against the emulator, with the test key.
fn natctl_aws(emu: &natd_tests::emulator::Emulator, args: &[&str]) -> std::process::Output {
    Command::new(natd_tests::bin("natctl"))
        .args([
            "--endpoint-url",
            &emu.url(),
            "--region",
            natd_tests::emulator::REGION,
        ])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", natd_tests::emulator::TEST_KEY.0)
        .env("AWS_SECRET_ACCESS_KEY", natd_tests::emulator::TEST_KEY.1)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap()
}

#[tokio::test]
async fn subnets_are_classified_per_az_and_bad_vpcs_refused() {
    let emu = natd_tests::emulator::Emulator::start();
    let w = natd_tests::world::World::new(&emu.sdk()).await;
    let (pub_a, priv_a, priv_b) = (
        &w.public_subnet,
        &w.private_subnets[0],
        &w.private_subnets[1],
    );

    let out = natctl_aws(
        &emu,
        &[
            "subnets", "--vpc", &w.vpc, "--env", "dev", "--output", "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["azs"]["eu-west-1a"]["public"], serde_json::json!([pub_a]));
    assert_eq!(
        v["azs"]["eu-west-1a"]["private"],
        serde_json::json!([priv_a])
    );
    assert_eq!(
        v["azs"]["eu-west-1b"]["private"],
        serde_json::json!([priv_b])
    );

    // prod needs a NAT gateway in every AZ with private subnets: b has no public subnet.
    let out = natctl_aws(&emu, &["subnets", "--vpc", &w.vpc, "--env", "prod"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("eu-west-1b") && text(&out).contains(priv_b.as_str()),
        "{}",
        text(&out)
    );

    for (args, needle) in [
        (
            vec!["subnets", "--vpc", "vpc-0123456789abcdef0"],
            "vpc-0123456789abcdef0",
        ),
        (
            vec![
                "subnets",
                "--vpc",
                &w.vpc,
                "--env",
                "dev",
                "--private-subnets",
                "subnet-0ffffffffffffffff",
            ],
            "subnet-0ffffffffffffffff",
        ),
    ] {
        let out = natctl_aws(&emu, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(needle), "{args:?}: {}", text(&out));
    }
}
