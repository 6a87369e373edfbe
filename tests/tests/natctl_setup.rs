//! `natctl setup --env dev` against the emulator, checked with an independent client
//! (the AWS CLI from the emulator's venv), not with natctl's own readers.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::cli::{natctl, snapshot, stdout, take_over_like_natd};
use natd_tests::emulator::Emulator;
use natd_tests::world::{IMAGE, World, text};

#[tokio::test]
async fn setup_dev_builds_the_stack_and_a_rerun_changes_nothing() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let setup = [
        "setup", "--env", "dev", "--vpc", &w.vpc, "--name", "dev1", "--ami", IMAGE,
    ];
    let out = natctl(&emu, &setup);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("Plan for stack dev1") && stdout(&out).contains("Applied"),
        "{}",
        text(&out)
    );

    // The group, with one instance held by natd's launch hook.
    let g = emu.aws(&[
        "autoscaling",
        "describe-auto-scaling-groups",
        "--auto-scaling-group-names",
        "natd-dev1",
    ]);
    let g = &g["AutoScalingGroups"][0];
    assert_eq!(g["DesiredCapacity"], 1);
    assert_eq!(g["VPCZoneIdentifier"], w.public_subnet.as_str());
    assert_eq!(g["Instances"][0]["LifecycleState"], "Pending:Wait");
    let hooks = emu.aws(&[
        "autoscaling",
        "describe-lifecycle-hooks",
        "--auto-scaling-group-name",
        "natd-dev1",
    ]);
    assert_eq!(
        hooks["LifecycleHooks"][0]["LifecycleTransition"],
        natd_contract::LAUNCHING_TRANSITION
    );
    // The launch template: IMDSv2 only, hop limit 1, the instance profile, the SG.
    let v = emu.aws(&[
        "ec2",
        "describe-launch-template-versions",
        "--launch-template-name",
        "natd-dev1",
    ]);
    let data = &v["LaunchTemplateVersions"][0]["LaunchTemplateData"];
    assert_eq!(data["MetadataOptions"]["HttpTokens"], "required");
    assert_eq!(data["MetadataOptions"]["HttpPutResponseHopLimit"], 1);
    assert_eq!(data["IamInstanceProfile"]["Name"], "natd-dev1");
    assert_eq!(data["ImageId"], IMAGE);
    // The NAT instance's ENI carries the stack's tag: natd's policy needs it.
    let eni_tags: Vec<&serde_json::Value> = data["TagSpecifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["ResourceType"] == "network-interface")
        .flat_map(|t| t["Tags"].as_array().unwrap())
        .collect();
    assert!(
        eni_tags
            .iter()
            .any(|t| t["Key"] == "natd:stack" && t["Value"] == "dev1"),
        "{data}"
    );
    // The role carries exactly natd's policy.
    let p = emu.aws(&[
        "iam",
        "get-role-policy",
        "--role-name",
        "natd-dev1",
        "--policy-name",
        "natd-dev1",
    ]);
    assert_eq!(p["PolicyDocument"], natd_contract::agent_policy("dev1"));
    let ip = emu.aws(&[
        "iam",
        "get-instance-profile",
        "--instance-profile-name",
        "natd-dev1",
    ]);
    assert_eq!(ip["InstanceProfile"]["Roles"][0]["RoleName"], "natd-dev1");
    // The SG admits exactly the private subnets.
    let sg = emu.aws(&[
        "ec2",
        "describe-security-groups",
        "--filters",
        "Name=group-name,Values=natd-dev1",
    ]);
    let sg = &sg["SecurityGroups"][0];
    let mut cidrs: Vec<&str> = sg["IpPermissions"][0]["IpRanges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["CidrIp"].as_str().unwrap())
        .collect();
    cidrs.sort();
    assert_eq!(cidrs, ["10.20.1.0/24", "10.20.2.0/24"]);
    assert!(
        sg["Tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["Key"] == "natd:stack" && t["Value"] == "dev1")
    );
    // The private subnets' table (the main table here) is tagged for natd; the public one is not.
    let tagged = emu.aws(&[
        "ec2",
        "describe-route-tables",
        "--filters",
        "Name=tag:natd:egress,Values=dev1",
    ]);
    let tagged = tagged["RouteTables"].as_array().unwrap();
    assert_eq!(tagged.len(), 1);
    assert_eq!(tagged[0]["Associations"][0]["Main"], true);

    // Again: nothing to do, and plan agrees.
    for cmd in [
        &setup[..],
        &[
            "plan", "--env", "dev", "--vpc", &w.vpc, "--name", "dev1", "--ami", IMAGE,
        ][..],
    ] {
        let again = natctl(&emu, cmd);
        assert!(again.status.success(), "{}", text(&again));
        assert_eq!(
            stdout(&again).trim(),
            "No changes necessary.",
            "{}",
            text(&again)
        );
    }
}

#[tokio::test]
async fn an_interrupted_setup_converges_without_duplicates() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    // A run that died after its first two steps left a security group and a role.
    emu.aws(&[
        "ec2",
        "create-security-group",
        "--group-name",
        "natd-dev1",
        "--description",
        "left over",
        "--vpc-id",
        &w.vpc,
        "--tag-specifications",
        "ResourceType=security-group,Tags=[{Key=natd:stack,Value=dev1}]",
    ]);
    emu.aws(&[
        "iam",
        "create-role",
        "--role-name",
        "natd-dev1",
        "--assume-role-policy-document",
        "{}",
        "--tags",
        "Key=natd:stack,Value=dev1",
    ]);
    let out = natctl(
        &emu,
        &[
            "setup", "--env", "dev", "--vpc", &w.vpc, "--name", "dev1", "--ami", IMAGE,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !stdout(&out).contains("+ security group natd-dev1"),
        "{}",
        text(&out)
    );
    let sgs = emu.aws(&[
        "ec2",
        "describe-security-groups",
        "--filters",
        "Name=group-name,Values=natd-dev1",
    ]);
    assert_eq!(sgs["SecurityGroups"].as_array().unwrap().len(), 1);
    let roles = emu.aws(&["iam", "list-roles"]);
    assert_eq!(
        roles["Roles"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["RoleName"] == "natd-dev1")
            .count(),
        1
    );
    let g = emu.aws(&["autoscaling", "describe-auto-scaling-groups"]);
    assert_eq!(g["AutoScalingGroups"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_created() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let before = emu.aws(&["ec2", "describe-security-groups"])["SecurityGroups"]
        .as_array()
        .unwrap()
        .len();
    for (args, needle) in [
        (
            vec![
                "setup",
                "--env",
                "dev",
                "--vpc",
                "vpc-0123456789abcdef0",
                "--ami",
                IMAGE,
            ],
            "vpc-0123456789abcdef0",
        ),
        (
            vec!["setup", "--env", "staging", "--vpc", &w.vpc],
            "staging",
        ),
        (
            vec![
                "setup", "--env", "dev", "--vpc", &w.vpc, "--name", "dev one", "--ami", IMAGE,
            ],
            "dev one",
        ),
        (
            vec![
                "setup",
                "--env",
                "dev",
                "--vpc",
                &w.vpc,
                "--private-subnets",
                "subnet-0ffffffffffffffff",
                "--ami",
                IMAGE,
            ],
            "subnet-0ffffffffffffffff",
        ),
        (vec!["setup", "--env", "dev", "--vpc", &w.vpc], "natd:ami"),
        // An x86_64 image for an arm64 instance type.
        (
            vec![
                "setup",
                "--env",
                "dev",
                "--vpc",
                &w.vpc,
                "--ami",
                "ami-12c6146b",
            ],
            "x86_64",
        ),
        (
            vec![
                "setup",
                "--env",
                "dev",
                "--vpc",
                &w.vpc,
                "--ami",
                "ami-0000000000000dead",
            ],
            "ami-0000000000000dead",
        ),
        (
            vec![
                "setup",
                "--env",
                "dev",
                "--vpc",
                &w.vpc,
                "--ami",
                IMAGE,
                "--instance-type",
                "t9z.huge",
            ],
            "t9z.huge",
        ),
        // A public subnet named private: natd would take over an internet gateway route.
        (
            vec![
                "setup",
                "--env",
                "dev",
                "--vpc",
                &w.vpc,
                "--ami",
                IMAGE,
                "--private-subnets",
                &w.public_subnet,
            ],
            "is public, not private",
        ),
        (
            vec![
                "setup",
                "--env",
                "dev",
                "--vpc",
                &w.vpc,
                "--ami",
                IMAGE,
                "--public-subnets",
                &w.private_subnets[0],
            ],
            "is not public",
        ),
        (
            vec![
                "--profile",
                "no-such-profile",
                "setup",
                "--env",
                "dev",
                "--vpc",
                &w.vpc,
                "--ami",
                IMAGE,
            ],
            "no-such-profile",
        ),
        (
            vec![
                "setup",
                "--env",
                "dev",
                "--vpc",
                &w.vpc,
                "--ami",
                IMAGE,
                "--name",
                "a-stack-name-longer-than-iam-allows",
            ],
            "a-stack-name-longer-than-iam-allows",
        ),
    ] {
        let out = natctl(&emu, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(needle), "{args:?}: {}", text(&out));
    }
    let after = emu.aws(&["ec2", "describe-security-groups"])["SecurityGroups"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after, "no security group created");
    assert_eq!(
        emu.aws(&["autoscaling", "describe-auto-scaling-groups"])["AutoScalingGroups"],
        serde_json::json!([])
    );
    assert_eq!(
        emu.aws(&["iam", "list-roles"])["Roles"],
        serde_json::json!([])
    );
}

#[tokio::test]
async fn teardown_leaves_the_vpc_as_it_was() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let snapshot = || snapshot(&emu, &w.vpc);
    let before = snapshot();
    let out = natctl(
        &emu,
        &[
            "setup", "--env", "dev", "--vpc", &w.vpc, "--name", "dev1", "--ami", IMAGE,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // natd on the instance takes the route over, as it would on AWS.
    let (instance, _eni, _table) = take_over_like_natd(&emu, &w, "dev1").await;
    // Someone else's resources in the same VPC stay.
    let other = w.route_table(Some("other")).await;

    let out = natctl(&emu, &["teardown", "--name", "dev1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("auto scaling group natd-dev1"),
        "{}",
        text(&out)
    );
    let after = snapshot();
    let strip_other = |mut v: serde_json::Value| {
        let tables = v["route_tables"].as_array_mut().unwrap();
        tables.retain(|t| t["RouteTableId"] != other.as_str());
        v
    };
    assert_eq!(strip_other(after), before, "the VPC is as before setup");
    assert_eq!(w.instance_state(&instance).await, "terminated");
    assert_eq!(w.default_route(&other).await, None);
    let again = natctl(&emu, &["teardown", "--name", "dev1"]);
    assert_eq!(
        stdout(&again).trim(),
        "Nothing to remove for stack dev1.",
        "{}",
        text(&again)
    );
}

#[tokio::test]
async fn status_tells_working_from_broken_egress() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let out = natctl(
        &emu,
        &[
            "setup", "--env", "dev", "--vpc", &w.vpc, "--name", "dev1", "--ami", IMAGE,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // No natd has taken the route yet.
    let st = natctl(&emu, &["status", "--name", "dev1"]);
    assert_eq!(st.status.code(), Some(3), "{}", text(&st));
    assert!(
        stdout(&st).contains("BROKEN") && stdout(&st).contains("no route"),
        "{}",
        text(&st)
    );
    // natd took it over.
    let (instance, eni, _table) = take_over_like_natd(&emu, &w, "dev1").await;
    let st = natctl(&emu, &["status", "--name", "dev1", "--output", "json"]);
    assert!(st.status.success(), "{}", text(&st));
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["healthy"], true);
    assert_eq!(v["route_tables"][0]["target"], eni.as_str());
    // The instance dies: its route is a blackhole until the replacement's natd takes it.
    w.ec2
        .terminate_instances()
        .instance_ids(&instance)
        .send()
        .await
        .unwrap();
    emu.settle().await;
    let st = natctl(&emu, &["status", "--name", "dev1"]);
    assert_eq!(st.status.code(), Some(3), "{}", text(&st));
    assert!(stdout(&st).contains("blackhole"), "{}", text(&st));
}
