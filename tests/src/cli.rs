//! Running natctl against the emulator, and checking what it built with the AWS CLI
//! (an independent client), not with natctl's own readers.

use crate::emulator::{Emulator, REGION, TEST_KEY};
use crate::world::World;
use std::process::{Command, Output};

/// natctl with the emulator's endpoint, region and test key.
pub fn command(emu: &Emulator, args: &[&str]) -> Command {
    let mut c = Command::new(crate::bin("natctl"));
    c.args(["--endpoint-url", &emu.url(), "--region", REGION])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", TEST_KEY.0)
        .env("AWS_SECRET_ACCESS_KEY", TEST_KEY.1)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE");
    // natctl allows AWS this long to show a change (`--settle`): the emulator's window
    // of eventual consistency (emulator::STALE_SECS) and a second of margin.
    if std::env::var_os("NATCTL_SETTLE_SECS").is_none() {
        c.env("NATCTL_SETTLE_SECS", "2");
    }
    c
}

/// Runs natctl to completion.
pub fn natctl(emu: &Emulator, args: &[&str]) -> Output {
    command(emu, args).output().unwrap()
}

/// Its standard output.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Does what natd on the stack's instance would do to every tagged table: points its
/// default route at the instance's ENI. Returns (instance, ENI, first table).
pub async fn take_over_like_natd(
    emu: &Emulator,
    w: &World,
    stack: &str,
) -> (String, String, String) {
    let group = format!("natd-{stack}");
    let g = emu.aws(&[
        "autoscaling",
        "describe-auto-scaling-groups",
        "--auto-scaling-group-names",
        &group,
    ]);
    let instance = g["AutoScalingGroups"][0]["Instances"][0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_string();
    let (eni, _) = w.eni(&instance).await;
    let filter = format!("Name=tag:natd:egress,Values={stack}");
    let tables = emu.aws(&["ec2", "describe-route-tables", "--filters", &filter]);
    let mut first = None;
    for t in tables["RouteTables"].as_array().unwrap() {
        let table = t["RouteTableId"].as_str().unwrap().to_string();
        let has_default = t["Routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["DestinationCidrBlock"] == "0.0.0.0/0");
        if has_default {
            w.ec2
                .replace_route()
                .route_table_id(&table)
                .destination_cidr_block("0.0.0.0/0")
                .network_interface_id(&eni)
                .send()
                .await
                .unwrap();
        } else {
            w.ec2
                .create_route()
                .route_table_id(&table)
                .destination_cidr_block("0.0.0.0/0")
                .network_interface_id(&eni)
                .send()
                .await
                .unwrap();
        }
        first.get_or_insert(table);
    }
    // As after natd's takeover on AWS: natctl's reads show it once the window of
    // eventual consistency has passed.
    emu.settle().await;
    (instance, eni, first.expect("a tagged table"))
}

/// The data of launch template `name`'s default version, read with the AWS CLI.
pub fn template_data(emu: &Emulator, name: &str) -> serde_json::Value {
    emu.aws(&[
        "ec2",
        "describe-launch-template-versions",
        "--launch-template-name",
        name,
        "--versions",
        "$Default",
    ])["LaunchTemplateVersions"][0]["LaunchTemplateData"]
        .clone()
}

/// natd's boot configuration as an instance launched from template `name` gets it:
/// decoded from the template's user data.
pub fn template_boot(emu: &Emulator, name: &str) -> natd_contract::boot::BootConfig {
    let data = template_data(emu, name);
    let user_data = data["UserData"].as_str().expect("user data");
    let bytes = aws_smithy_types::base64::decode(user_data).expect("base64 user data");
    natd_contract::boot::BootConfig::from_cloud_config(&String::from_utf8(bytes).unwrap())
        .expect("a boot configuration")
}

/// The inline policy of natd's role `name` (the role and its policy share the name).
pub fn role_policy(emu: &Emulator, name: &str) -> serde_json::Value {
    emu.aws(&[
        "iam",
        "get-role-policy",
        "--role-name",
        name,
        "--policy-name",
        name,
    ])["PolicyDocument"]
        .clone()
}

/// Everything setup could create or change, read by `emulator/snapshot.py` with
/// botocore (the AWS CLI's client library) in one process: the VPC's route tables,
/// security groups and endpoints, launch templates, groups, roles, instance profiles,
/// NAT gateways that are not deleted, Elastic IPs, functions' VPC configuration.
pub fn snapshot(emu: &Emulator, vpc: &str) -> serde_json::Value {
    let out = Command::new(crate::python())
        .arg(crate::root().join("tests/emulator/snapshot.py"))
        .args([&emu.url(), REGION, vpc])
        .env("AWS_ACCESS_KEY_ID", TEST_KEY.0)
        .env("AWS_SECRET_ACCESS_KEY", TEST_KEY.1)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "snapshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `natctl doctor --vpc VPC --lambda FUNCTION --output json`, parsed (`None` when it
/// printed no JSON).
pub fn doctor_json(emu: &Emulator, vpc: &str, function: &str) -> Option<serde_json::Value> {
    let out = natctl(
        emu,
        &[
            "doctor", "--vpc", vpc, "--lambda", function, "--output", "json",
        ],
    );
    serde_json::from_slice(&out.stdout).ok()
}
