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
    // What natd may do, action by action: a change here changes the contract and
    // must be made on purpose (the least-privilege test proves natd needs no more).
    let mut actions: Vec<String> = Vec::new();
    for s in printed["Statement"].as_array().unwrap() {
        assert_eq!(s["Effect"], "Allow", "{s}");
        let list: Vec<String> = match &s["Action"] {
            serde_json::Value::String(a) => vec![a.clone()],
            serde_json::Value::Array(a) => {
                a.iter().map(|x| x.as_str().unwrap().to_string()).collect()
            }
            other => panic!("Action {other}"),
        };
        let mutating = list.iter().any(|a| !a.contains(":Describe"));
        if list == ["cloudwatch:PutMetricData"] {
            // PutMetricData takes no resource: it is scoped by its namespace.
            assert_eq!(
                s["Condition"]["StringEquals"]["cloudwatch:namespace"], "natd",
                "{s}"
            );
        } else if mutating {
            assert_ne!(s["Resource"], "*", "a mutating statement on *: {s}");
        }
        // Routes, the Elastic IP and the Auto Scaling calls only for the stack "dev".
        if list.iter().any(|a| {
            matches!(
                a.as_str(),
                "ec2:ReplaceRoute"
                    | "ec2:CreateRoute"
                    | "autoscaling:CompleteLifecycleAction"
                    | "autoscaling:SetInstanceHealth"
            )
        }) || s["Resource"]
            .as_str()
            .is_some_and(|r| r.contains("elastic-ip"))
        {
            let cond = s["Condition"]["StringEquals"]
                .as_object()
                .expect("a tag condition");
            assert!(cond.values().all(|v| v == "dev"), "{s}");
        }
        // Network-interface calls only on ENIs tagged for the stack "dev".
        if s["Resource"]
            .as_str()
            .is_some_and(|r| r.contains("network-interface"))
        {
            assert_eq!(
                s["Condition"]["StringEquals"]["ec2:ResourceTag/natd:stack"], "dev",
                "{s}"
            );
        }
        actions.extend(list);
    }
    actions.sort();
    actions.dedup();
    assert_eq!(
        actions,
        [
            "autoscaling:CompleteLifecycleAction",
            "autoscaling:DescribeAutoScalingInstances",
            "autoscaling:DescribeLifecycleHooks",
            "autoscaling:SetInstanceHealth",
            // In its own namespace only (a condition on cloudwatch:namespace).
            "cloudwatch:PutMetricData",
            "ec2:AssignPrivateIpAddresses",
            "ec2:AssociateAddress",
            "ec2:CreateRoute",
            // Its own instance's natd:health tag only (a condition on the key).
            "ec2:CreateTags",
            "ec2:DescribeAddresses",
            "ec2:DescribeInstances",
            "ec2:DescribeNetworkInterfaceAttribute",
            "ec2:DescribeNetworkInterfaces",
            "ec2:DescribeRouteTables",
            "ec2:ModifyNetworkInterfaceAttribute",
            "ec2:ReplaceRoute",
            "ec2:UnassignPrivateIpAddresses",
        ]
    );
    // Another stack's policy differs only in the stack it names.
    let other = natctl(&["policy", "--stack", "other"]);
    let other: serde_json::Value = serde_json::from_slice(&other.stdout).unwrap();
    assert_eq!(
        other.to_string().replace("\"other\"", "\"dev\""),
        printed.to_string()
    );
    // A stack name natd would refuse is refused here too.
    let bad = natctl(&["policy", "--stack", "Dev One"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
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
    assert!(
        t.contains("ipv6-only") && t.contains("CloudWatch metrics"),
        "{t}"
    );
}

#[test]
fn cost_prices_ipv6_egress_and_a_share_of_traffic_moved_to_it() {
    let out = natctl(&[
        "cost",
        "--azs",
        "2",
        "--gb-per-month",
        "1000",
        "--ipv6-share",
        "50",
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ipv6_only"]["total_usd"], 0.0, "{v}");
    let shared = v["ipv6_share"]["estimates"].as_array().unwrap();
    let prod = shared.iter().find(|e| e["env"] == "prod").unwrap();
    // Half of 1,000 GB no longer processed by the gateways: 500 x 0.045 saved.
    let saved = v["prod"]["total_usd"].as_f64().unwrap() - prod["total_usd"].as_f64().unwrap();
    assert!((saved - 22.5).abs() < 1e-6, "{saved}");
    let bad = natctl(&["cost", "--ipv6-share", "120"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("120"), "{}", text(&bad));
}

#[test]
fn cost_rejects_bad_input_naming_it() {
    for (args, needle) in [
        (&["cost", "--price", "nat_hour=1"][..], "nat_hour"),
        (&["cost", "--price", "instance_hour=cheap"][..], "cheap"),
        (&["cost", "--azs", "0"][..], "'0' for '--azs"),
        (&["cost", "--gb-per-month", "-5"][..], "-5"),
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
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.contains(".TH natctl"), "{}", text(&man));
    for section in ["EXIT STATUS", "ENVIRONMENT", "EXAMPLES", "AWS_PROFILE"] {
        assert!(page.contains(section), "{section} missing");
    }
    // A page per subcommand, with its own options.
    let setup = natctl(&["man", "setup"]);
    assert!(setup.status.success(), "{}", text(&setup));
    let page = String::from_utf8_lossy(&setup.stdout);
    assert!(page.contains(".TH natctl-setup"), "{page}");
    assert!(
        page.contains("drain\\-seconds") || page.contains("drain-seconds"),
        "{page}"
    );
    assert!(page.contains("EXIT STATUS"), "{page}");
    let nope = natctl(&["man", "nope"]);
    assert_eq!(nope.status.code(), Some(2), "{}", text(&nope));
    assert!(text(&nope).contains("nope"));
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

    // Named private subnets replace discovery: exactly those, no others.
    let out = natctl_aws(
        &emu,
        &[
            "subnets",
            "--vpc",
            &w.vpc,
            "--env",
            "dev",
            "--private-subnets",
            priv_a,
            "--output",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let private: Vec<&serde_json::Value> = v["azs"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|az| az["private"].as_array().unwrap())
        .collect();
    assert_eq!(private, vec![&serde_json::json!(priv_a)], "{v}");

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
