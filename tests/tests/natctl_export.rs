//! `natctl export --format cloudformation` against the emulator: each kind of stack
//! exports as a template cfn-lint (AWS's CloudFormation linter) passes, the template
//! deploys in the emulator's CloudFormation to the resources setup would make, and
//! deleting the CloudFormation stack leaves nothing of them.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::cli::{natctl, role_policy, snapshot, stdout, template_boot, template_data};
use natd_tests::emulator::Emulator;
use natd_tests::world::{IMAGE, World, text};
use std::process::Command;

/// `natctl export --format cloudformation` with `args`: the template.
fn export(emu: &Emulator, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["export", "--format", "cloudformation"];
    all.extend_from_slice(args);
    let out = natctl(emu, &all);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

/// cfn-lint on `template`: its findings (empty when it passes, warnings included).
fn lint(template: &serde_json::Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("template.json");
    std::fs::write(&path, template.to_string()).unwrap();
    let out = Command::new(natd_tests::python().with_file_name("cfn-lint"))
        .args(["--regions", "eu-west-1", "--"])
        .arg(&path)
        .output()
        .expect("cfn-lint (tests/setup installs it)");
    if out.status.success() {
        String::new()
    } else {
        format!(
            "cfn-lint exit {:?}:\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// Creates CloudFormation stack `name` from `template` and returns its status and
/// the reasons of its failed events.
fn deploy(emu: &Emulator, name: &str, template: &serde_json::Value) -> (String, Vec<String>) {
    emu.aws(&[
        "cloudformation",
        "create-stack",
        "--stack-name",
        name,
        "--template-body",
        &template.to_string(),
        "--capabilities",
        "CAPABILITY_NAMED_IAM",
    ]);
    let s = emu.aws(&["cloudformation", "describe-stacks", "--stack-name", name]);
    let events = emu.aws(&[
        "cloudformation",
        "describe-stack-events",
        "--stack-name",
        name,
    ]);
    let failed = events["StackEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ResourceStatus"] == "CREATE_FAILED")
        .map(|e| {
            e["ResourceStatusReason"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    (
        s["Stacks"][0]["StackStatus"].as_str().unwrap().to_string(),
        failed,
    )
}

/// Gives each private subnet a route table of its own (the VPC's main table serves
/// them at first): a template routes existing tables in place, where setup would split
/// a table that subnets of several AZs share.
fn own_tables(emu: &Emulator, w: &World) {
    for s in &w.private_subnets {
        let t = emu.aws(&["ec2", "create-route-table", "--vpc-id", &w.vpc]);
        let t = t["RouteTable"]["RouteTableId"]
            .as_str()
            .unwrap()
            .to_string();
        emu.aws(&[
            "ec2",
            "associate-route-table",
            "--route-table-id",
            &t,
            "--subnet-id",
            s,
        ]);
    }
}

fn alarm_names(emu: &Emulator, prefix: &str) -> Vec<String> {
    let a = emu.aws(&[
        "cloudwatch",
        "describe-alarms",
        "--alarm-name-prefix",
        prefix,
    ]);
    a["MetricAlarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["AlarmName"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn every_kind_of_stack_exports_as_a_template_cfn_lint_passes_and_export_changes_nothing() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    w.public_subnet_b().await;
    own_tables(&emu, &w);
    let before = snapshot(&emu, &w.vpc);
    let calls = emu.calls().len();
    for args in [
        vec!["--env", "dev", "--ami", IMAGE],
        vec!["--env", "dev", "--ami", IMAGE, "--eip"],
        vec!["--env", "dev", "--ami", IMAGE, "--ha", "--egress-ips", "2"],
        vec!["--env", "prod"],
        vec!["--env", "prod", "--gateway", "regional"],
    ] {
        let mut all = vec!["--vpc", w.vpc.as_str(), "--name", "x"];
        all.extend(args.iter().copied());
        let t = export(&emu, &all);
        assert_eq!(lint(&t), "", "{args:?}: {t:#}");
    }
    // Export reads; it changes nothing.
    let mutating: Vec<String> = emu.calls()[calls..]
        .iter()
        .filter(|c| natd_tests::emulator::is_mutating(c))
        .cloned()
        .collect();
    assert_eq!(mutating, Vec::<String>::new());
    assert_eq!(snapshot(&emu, &w.vpc), before);

    // What a template cannot say yet is refused by name (export changes nothing).
    let out = natctl(
        &emu,
        &[
            "export",
            "--format",
            "cloudformation",
            "--env",
            "dev",
            "--vpc",
            &w.vpc,
            "--ami",
            IMAGE,
            "--flow-logs",
            "off",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--flow-logs"), "{}", text(&out));
    // Bad input names the bad value, as setup's does.
    let out = natctl(
        &emu,
        &[
            "export",
            "--format",
            "cloudformation",
            "--env",
            "dev",
            "--vpc",
            "vpc-nope",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("vpc-nope"), "{}", text(&out));
}

#[tokio::test]
async fn a_dev_template_deploys_to_what_setup_makes_and_its_deletion_leaves_nothing() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    own_tables(&emu, &w);
    let before = snapshot(&emu, &w.vpc);
    let t = export(
        &emu,
        &[
            "--env", "dev", "--vpc", &w.vpc, "--name", "cfn", "--ami", IMAGE, "--eip",
        ],
    );
    let (status, failed) = deploy(&emu, "natd-cfn", &t);
    assert_eq!(status, "CREATE_COMPLETE", "{failed:?}");

    // The group of one, its hook in place before its first instance: the instance
    // waits for natd.
    let g = emu.aws(&[
        "autoscaling",
        "describe-auto-scaling-groups",
        "--auto-scaling-group-names",
        "natd-cfn",
    ])["AutoScalingGroups"][0]
        .clone();
    assert_eq!(g["MinSize"], 1);
    assert_eq!(g["Instances"][0]["LifecycleState"], "Pending:Wait", "{g}");
    let hooks = emu.aws(&[
        "autoscaling",
        "describe-lifecycle-hooks",
        "--auto-scaling-group-name",
        "natd-cfn",
    ]);
    assert_eq!(
        hooks["LifecycleHooks"][0]["LifecycleHookName"],
        "natd-ready"
    );
    assert_eq!(hooks["LifecycleHooks"][0]["HeartbeatTimeout"], 600);
    // The template's boot configuration names the private tables; the role's policy
    // is natd's, granting routes in exactly those.
    let lt = template_data(&emu, "natd-cfn");
    assert_eq!(lt["MetadataOptions"]["HttpTokens"], "required");
    let boot = template_boot(&emu, "natd-cfn");
    let mut tables: Vec<String> = Vec::new();
    for s in &w.private_subnets {
        let f = format!("Name=association.subnet-id,Values={s}");
        let t = emu.aws(&["ec2", "describe-route-tables", "--filters", &f]);
        tables.push(t["RouteTables"][0]["RouteTableId"].as_str().unwrap().into());
    }
    tables.sort();
    tables.dedup();
    assert_eq!(boot.route_tables, tables);
    assert!(boot.require_eip);
    let policy = role_policy(&emu, "natd-cfn");
    assert_eq!(
        policy,
        natd_contract::agent_policy_with_tables("cfn", &tables)
    );
    let eips = emu.aws(&[
        "ec2",
        "describe-addresses",
        "--filters",
        "Name=tag:natd:egress,Values=cfn",
    ]);
    assert_eq!(eips["Addresses"].as_array().unwrap().len(), 1, "{eips}");
    assert_eq!(
        alarm_names(&emu, "natd-cfn-").len(),
        natd_contract::metrics::ALARMS
            .iter()
            .filter(|a| !a.pair_only)
            .count()
    );

    // natctl reads the template's stack as its own: status finds the group, and
    // setup's plan on the same VPC and name would change nothing it owns twice.
    let status = natctl(&emu, &["status", "--name", "cfn", "--output", "json"]);
    let s: serde_json::Value =
        serde_json::from_slice(&status.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&status)));
    let read_tables: Vec<&str> = s["route_tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(read_tables, tables, "{s}");
    assert_eq!(s["instances"].as_array().unwrap().len(), 1, "{s}");

    // Deleting the CloudFormation stack removes everything it made.
    emu.aws(&["cloudformation", "delete-stack", "--stack-name", "natd-cfn"]);
    let after = snapshot(&emu, &w.vpc);
    assert_eq!(after, before);
    assert_eq!(alarm_names(&emu, "natd-cfn-"), Vec::<String>::new());
}

#[tokio::test]
async fn a_prod_template_routes_each_az_to_its_gateway_and_a_failed_stack_rolls_back() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    w.public_subnet_b().await;
    own_tables(&emu, &w);
    let before = snapshot(&emu, &w.vpc);
    let t = export(&emu, &["--env", "prod", "--vpc", &w.vpc, "--name", "p"]);
    let (status, failed) = deploy(&emu, "natd-p", &t);
    assert_eq!(status, "CREATE_COMPLETE", "{failed:?}");
    // Each private subnet's table routes to the gateway in the subnet's AZ.
    for s in &w.private_subnets {
        let sub = emu.aws(&["ec2", "describe-subnets", "--subnet-ids", s])["Subnets"][0].clone();
        let az = sub["AvailabilityZone"].as_str().unwrap();
        let f = format!("Name=association.subnet-id,Values={s}");
        let table =
            emu.aws(&["ec2", "describe-route-tables", "--filters", &f])["RouteTables"][0].clone();
        let gw = table["Routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["DestinationCidrBlock"] == "0.0.0.0/0")
            .and_then(|r| r["NatGatewayId"].as_str())
            .unwrap_or_else(|| panic!("{s}: no route to a gateway: {table}"))
            .to_string();
        let g = emu.aws(&["ec2", "describe-nat-gateways", "--nat-gateway-ids", &gw])["NatGateways"]
            [0]
        .clone();
        let gw_subnet = g["SubnetId"].as_str().unwrap();
        let gw_az = emu.aws(&["ec2", "describe-subnets", "--subnet-ids", gw_subnet])["Subnets"][0]
            ["AvailabilityZone"]
            .clone();
        assert_eq!(gw_az, az, "{s} routes to a gateway of its own AZ");
    }
    let status = natctl(&emu, &["status", "--name", "p", "--output", "json"]);
    let s: serde_json::Value =
        serde_json::from_slice(&status.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&status)));
    assert_eq!(s["gateways"].as_array().unwrap().len(), 2, "{s}");
    assert_eq!(s["route_tables"].as_array().unwrap().len(), 2, "{s}");
    emu.aws(&["cloudformation", "delete-stack", "--stack-name", "natd-p"]);
    // Deleted gateways linger as `deleted` on AWS and are not counted as left.
    assert_eq!(snapshot(&emu, &w.vpc), before);

    // A resource CloudFormation cannot make fails the stack, and what it made goes.
    let mut bad = export(
        &emu,
        &[
            "--env", "dev", "--vpc", &w.vpc, "--name", "bad", "--ami", IMAGE,
        ],
    );
    bad["Resources"]["Unmodelled"] = serde_json::json!({
        "Type": "AWS::Example::Nothing",
        "DependsOn": ["NatGroup"],
        "Properties": {}
    });
    let (status, failed) = deploy(&emu, "natd-bad", &bad);
    assert_eq!(status, "ROLLBACK_COMPLETE");
    assert!(
        failed.iter().any(|f| f.contains("AWS::Example::Nothing")),
        "{failed:?}"
    );
    assert_eq!(snapshot(&emu, &w.vpc), before);
}
