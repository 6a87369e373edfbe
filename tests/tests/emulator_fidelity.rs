//! The emulator is as unkind as AWS where natctl depends on it: NAT gateways take time
//! and honour ClientToken, IAM roles and instance profiles propagate, Lambda functions
//! have states, security groups are set as EC2 sets them. Checked with the AWS CLI (an
//! independent client), so natctl's tests run against these behaviours, not against a
//! kinder emulator.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::emulator::{Emulator, REGION};
use natd_tests::world::{IMAGE, World};
use std::process::{Command, Output};
use std::time::Duration;

/// The AWS CLI against the emulator, failures included.
fn aws_raw(emu: &Emulator, args: &[&str]) -> Output {
    emu.aws_output(args)
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn nat_gateways_take_time_and_honour_client_token() {
    let emu = Emulator::start_env(None, SLOW);
    let w = World::new(&emu.sdk()).await;
    let alloc = emu.aws(&["ec2", "allocate-address", "--domain", "vpc"])["AllocationId"]
        .as_str()
        .unwrap()
        .to_string();
    let create = [
        "ec2",
        "create-nat-gateway",
        "--subnet-id",
        &w.public_subnet,
        "--allocation-id",
        &alloc,
        "--client-token",
        "natd-token-1",
    ];
    let first = emu.aws(&create);
    let id = first["NatGateway"]["NatGatewayId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(first["NatGateway"]["State"], "pending");
    // The same token answers the same gateway.
    let again = emu.aws(&create);
    assert_eq!(again["NatGateway"]["NatGatewayId"], id.as_str());
    let all = emu.aws(&["ec2", "describe-nat-gateways"]);
    assert_eq!(all["NatGateways"].as_array().unwrap().len(), 1);
    let state = |emu: &Emulator| {
        emu.aws(&["ec2", "describe-nat-gateways", "--nat-gateway-ids", &id])["NatGateways"][0]
            ["State"]
            .as_str()
            .unwrap()
            .to_string()
    };
    natd_tests::eventually(PATIENCE, "available", || async {
        (state(&emu) == "available").then_some(())
    })
    .await;
    emu.aws(&["ec2", "delete-nat-gateway", "--nat-gateway-id", &id]);
    assert_eq!(state(&emu), "deleting");
    natd_tests::eventually(PATIENCE, "deleted", || async {
        (state(&emu) == "deleted").then_some(())
    })
    .await;
}

#[tokio::test]
async fn regional_nat_gateways_belong_to_the_vpc_and_need_its_internet_gateway() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    // A subnet is refused: a regional gateway is created in a VPC.
    let bad = aws_raw(
        &emu,
        &[
            "ec2",
            "create-nat-gateway",
            "--availability-mode",
            "regional",
            "--vpc-id",
            &w.vpc,
            "--subnet-id",
            &w.public_subnet,
        ],
    );
    assert!(!bad.status.success());
    assert!(
        err(&bad).contains("InvalidParameterCombination"),
        "{}",
        err(&bad)
    );
    let g = emu.aws(&[
        "ec2",
        "create-nat-gateway",
        "--availability-mode",
        "regional",
        "--vpc-id",
        &w.vpc,
    ])["NatGateway"]
        .clone();
    assert_eq!(g["AvailabilityMode"], "regional");
    assert_eq!(g["State"], "pending");
    assert!(g["SubnetId"].is_null());
    assert_eq!(g["VpcId"], w.vpc.as_str());
    // Automatic mode: an AWS-provided address in each AZ of the VPC's subnets.
    let azs: Vec<&str> = g["NatGatewayAddresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["AvailabilityZone"].as_str().unwrap())
        .collect();
    assert!(azs.len() >= 2, "{g}");
    let id = g["NatGatewayId"].as_str().unwrap().to_string();
    let read = |emu: &Emulator, id: &str| {
        emu.aws(&["ec2", "describe-nat-gateways", "--nat-gateway-ids", id])["NatGateways"][0]
            .clone()
    };
    natd_tests::eventually(PATIENCE, "available", || async {
        (read(&emu, &id)["State"] == "available").then_some(())
    })
    .await;
    // Without an attached internet gateway it fails, as a public gateway does on AWS.
    let ec2 = aws_sdk_ec2::Client::new(&emu.sdk());
    let igws = ec2
        .describe_internet_gateways()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("attachment.vpc-id")
                .values(&w.vpc)
                .build(),
        )
        .send()
        .await
        .unwrap();
    for i in igws.internet_gateways() {
        ec2.detach_internet_gateway()
            .internet_gateway_id(i.internet_gateway_id().unwrap())
            .vpc_id(&w.vpc)
            .send()
            .await
            .unwrap();
    }
    let lone = emu.aws(&[
        "ec2",
        "create-nat-gateway",
        "--availability-mode",
        "regional",
        "--vpc-id",
        &w.vpc,
    ])["NatGateway"]["NatGatewayId"]
        .as_str()
        .unwrap()
        .to_string();
    natd_tests::eventually(PATIENCE, "failed", || async {
        let g = read(&emu, &lone);
        (g["State"] == "failed" && g["FailureCode"] == "Gateway.NotAttached").then_some(())
    })
    .await;
}

/// Each AWS CLI call takes a second or more here: the delays are longer in these tests
/// than the defaults, so the calls between a change and the check of its effect do not
/// outlast them on a busy machine.
const SLOW: &[(&str, &str)] = &[
    ("NATD_EMU_IAM_PROPAGATION_SECS", "20"),
    ("NATD_EMU_LAMBDA_UPDATE_SECS", "15"),
    ("NATD_EMU_NAT_DELETING_SECS", "15"),
];
/// How long the checks wait for a delay to pass.
const PATIENCE: Duration = Duration::from_secs(90);

#[tokio::test]
async fn a_new_instance_profile_is_refused_until_it_propagates() {
    let emu = Emulator::start_env(None, SLOW);
    emu.aws(&[
        "iam",
        "create-role",
        "--role-name",
        "r",
        "--assume-role-policy-document",
        "{}",
    ]);
    emu.aws(&[
        "iam",
        "create-instance-profile",
        "--instance-profile-name",
        "p",
    ]);
    emu.aws(&[
        "iam",
        "add-role-to-instance-profile",
        "--instance-profile-name",
        "p",
        "--role-name",
        "r",
    ]);
    let data = format!(
        "{{\"ImageId\":\"{IMAGE}\",\"InstanceType\":\"t4g.micro\",\"IamInstanceProfile\":{{\"Name\":\"p\"}}}}"
    );
    emu.aws(&[
        "ec2",
        "create-launch-template",
        "--launch-template-name",
        "nat-lt",
        "--launch-template-data",
        &data,
    ]);
    let group = [
        "autoscaling",
        "create-auto-scaling-group",
        "--auto-scaling-group-name",
        "g",
        "--launch-template",
        "LaunchTemplateName=nat-lt",
        "--min-size",
        "0",
        "--max-size",
        "1",
        "--availability-zones",
        "eu-west-1a",
    ];
    let o = aws_raw(&emu, &group);
    assert!(!o.status.success());
    assert!(
        err(&o).contains("Invalid IAM Instance Profile name"),
        "{}",
        err(&o)
    );
    natd_tests::eventually(PATIENCE, "the profile to propagate", || async {
        aws_raw(&emu, &group).status.success().then_some(())
    })
    .await;
}

#[tokio::test]
async fn lambda_functions_have_states_and_new_roles_propagate() {
    let emu = Emulator::start_env(None, SLOW);
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    emu.aws(&[
        "iam",
        "create-role",
        "--role-name",
        "old",
        "--assume-role-policy-document",
        trust,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("f.zip");
    let made = Command::new(natd_tests::python())
        .args([
            "-c",
            "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], 'w'); z.writestr('index.py', 'def handler(e, c):\\n    return 1\\n'); z.close()",
        ])
        .arg(&zip)
        .status()
        .unwrap();
    assert!(made.success());
    let created = emu.aws(&[
        "lambda",
        "create-function",
        "--function-name",
        "f",
        "--runtime",
        "python3.12",
        "--handler",
        "index.handler",
        "--role",
        "arn:aws:iam::123456789012:role/old",
        "--zip-file",
        &format!("fileb://{}", zip.display()),
    ]);
    assert_eq!(created["State"], "Pending");
    let get = |emu: &Emulator| emu.aws(&["lambda", "get-function", "--function-name", "f"]);
    natd_tests::eventually(PATIENCE, "active", || async {
        (get(&emu)["Configuration"]["State"] == "Active").then_some(())
    })
    .await;
    // A role made a moment ago cannot be assumed by Lambda yet.
    emu.aws(&[
        "iam",
        "create-role",
        "--role-name",
        "new",
        "--assume-role-policy-document",
        trust,
    ]);
    let to_new = [
        "lambda",
        "update-function-configuration",
        "--function-name",
        "f",
        "--role",
        "arn:aws:iam::123456789012:role/new",
    ];
    let o = aws_raw(&emu, &to_new);
    assert!(!o.status.success());
    assert!(
        err(&o).contains("cannot be assumed by Lambda"),
        "{}",
        err(&o)
    );
    natd_tests::eventually(PATIENCE, "the role to propagate", || async {
        aws_raw(&emu, &to_new).status.success().then_some(())
    })
    .await;
    // Right after an update: in progress, and a second update conflicts.
    assert_eq!(get(&emu)["Configuration"]["LastUpdateStatus"], "InProgress");
    let o = aws_raw(
        &emu,
        &[
            "lambda",
            "update-function-configuration",
            "--function-name",
            "f",
            "--timeout",
            "10",
        ],
    );
    assert!(!o.status.success());
    assert!(err(&o).contains("ResourceConflictException"), "{}", err(&o));
    natd_tests::eventually(PATIENCE, "the update to finish", || async {
        (get(&emu)["Configuration"]["LastUpdateStatus"] == "Successful").then_some(())
    })
    .await;
}

#[tokio::test]
async fn lambda_holds_its_network_interfaces_for_a_while_after_leaving_a_vpc() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let sg = emu.aws(&[
        "ec2",
        "create-security-group",
        "--group-name",
        "fn",
        "--description",
        "x",
        "--vpc-id",
        &w.vpc,
    ])["GroupId"]
        .as_str()
        .unwrap()
        .to_string();
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    emu.aws(&[
        "iam",
        "create-role",
        "--role-name",
        "fnrole",
        "--assume-role-policy-document",
        trust,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("f.zip");
    let made = Command::new(natd_tests::python())
        .args([
            "-c",
            "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], 'w'); z.writestr('index.py', 'x = 1\\n'); z.close()",
        ])
        .arg(&zip)
        .status()
        .unwrap();
    assert!(made.success());
    emu.aws(&[
        "lambda",
        "create-function",
        "--function-name",
        "g",
        "--runtime",
        "python3.12",
        "--handler",
        "index.handler",
        "--role",
        "arn:aws:iam::123456789012:role/fnrole",
        "--zip-file",
        &format!("fileb://{}", zip.display()),
    ]);
    let update = |vpc: String| {
        let emu = &emu;
        async move {
            natd_tests::eventually(PATIENCE, "the update", || async {
                aws_raw(
                    emu,
                    &[
                        "lambda",
                        "update-function-configuration",
                        "--function-name",
                        "g",
                        "--vpc-config",
                        &vpc,
                    ],
                )
                .status
                .success()
                .then_some(())
            })
            .await
        }
    };
    update(format!(
        "SubnetIds={},SecurityGroupIds={sg}",
        w.private_subnets[0]
    ))
    .await;
    let holders = |emu: &Emulator| {
        let filter = format!("Name=group-id,Values={sg}");
        emu.aws(&["ec2", "describe-network-interfaces", "--filters", &filter])["NetworkInterfaces"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(holders(&emu), 1, "one ENI in the function's subnet");
    let o = aws_raw(&emu, &["ec2", "delete-security-group", "--group-id", &sg]);
    assert!(err(&o).contains("DependencyViolation"), "{}", err(&o));
    // Out of the VPC: the ENI stays a while, then goes, and the group can be deleted.
    update("SubnetIds=[],SecurityGroupIds=[]".to_string()).await;
    natd_tests::eventually(PATIENCE, "the ENI to be released", || async {
        (holders(&emu) == 0).then_some(())
    })
    .await;
    emu.aws(&["ec2", "delete-security-group", "--group-id", &sg]);
}

#[tokio::test]
async fn security_groups_are_set_as_ec2_sets_them() {
    // The terminated instance's interface holds its group 8 s here (2 by default):
    // long enough for the two AWS CLI processes between the termination and the first
    // delete on a loaded machine.
    let emu = Emulator::start_env(None, &[("NATD_EMU_INSTANCE_ENI_RELEASE_SECS", "8")]);
    let w = World::new(&emu.sdk()).await;
    // The VPC's default group admits its own members.
    let filter = format!("Name=vpc-id,Values={}", w.vpc);
    let groups = emu.aws(&[
        "ec2",
        "describe-security-groups",
        "--filters",
        &filter,
        "Name=group-name,Values=default",
    ]);
    let default = &groups["SecurityGroups"][0];
    let id = default["GroupId"].as_str().unwrap();
    let ingress = &default["IpPermissions"];
    assert_eq!(ingress[0]["IpProtocol"], "-1", "{default}");
    assert_eq!(
        ingress[0]["UserIdGroupPairs"][0]["GroupId"], id,
        "{default}"
    );

    // A template's primary network interface gives the instance its groups and the
    // public IP it asks for.
    let sg = emu.aws(&[
        "ec2",
        "create-security-group",
        "--group-name",
        "nat",
        "--description",
        "nat",
        "--vpc-id",
        &w.vpc,
    ]);
    let sg = sg["GroupId"].as_str().unwrap();
    let data = format!(
        r#"{{"ImageId":"{IMAGE}","InstanceType":"t4g.nano","NetworkInterfaces":[{{"DeviceIndex":0,"SubnetId":"{}","Groups":["{sg}"],"AssociatePublicIpAddress":true}}]}}"#,
        w.public_subnet
    );
    emu.aws(&[
        "ec2",
        "create-launch-template",
        "--launch-template-name",
        "nat",
        "--launch-template-data",
        &data,
    ]);
    let run = emu.aws(&[
        "ec2",
        "run-instances",
        "--launch-template",
        "LaunchTemplateName=nat",
        "--count",
        "1",
    ]);
    let i = &run["Instances"][0];
    assert_eq!(i["SecurityGroups"][0]["GroupId"], sg, "{i}");
    assert_eq!(i["NetworkInterfaces"][0]["Groups"][0]["GroupId"], sg, "{i}");
    assert!(i["PublicIpAddress"].is_string(), "and a public IP: {i}");

    // An interface endpoint's interfaces: addresses of their subnets, the endpoint's
    // groups.
    let e = emu.aws(&[
        "ec2",
        "create-vpc-endpoint",
        "--vpc-id",
        &w.vpc,
        "--vpc-endpoint-type",
        "Interface",
        "--service-name",
        "com.amazonaws.eu-west-1.secretsmanager",
        "--subnet-ids",
        &w.private_subnets[1],
        "--security-group-ids",
        sg,
    ]);
    let eni = e["VpcEndpoint"]["NetworkInterfaceIds"][0].as_str().unwrap();
    let n = emu.aws(&[
        "ec2",
        "describe-network-interfaces",
        "--network-interface-ids",
        eni,
    ]);
    let n = &n["NetworkInterfaces"][0];
    assert!(
        n["PrivateIpAddress"]
            .as_str()
            .unwrap()
            .starts_with("10.20.2."),
        "{n}"
    );
    assert_eq!(n["Groups"][0]["GroupId"], sg, "{n}");
    let id = e["VpcEndpoint"]["VpcEndpointId"].as_str().unwrap();
    // One interface per subnet as subnets are added and removed.
    emu.aws(&[
        "ec2",
        "modify-vpc-endpoint",
        "--vpc-endpoint-id",
        id,
        "--add-subnet-ids",
        &w.private_subnets[0],
        "--remove-subnet-ids",
        &w.private_subnets[1],
    ]);
    let e2 = emu.aws(&["ec2", "describe-vpc-endpoints", "--vpc-endpoint-ids", id]);
    let enis = e2["VpcEndpoints"][0]["NetworkInterfaceIds"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(enis.len(), 1, "{e2}");
    let n = emu.aws(&[
        "ec2",
        "describe-network-interfaces",
        "--network-interface-ids",
        enis[0].as_str().unwrap(),
    ]);
    let n = &n["NetworkInterfaces"][0];
    assert!(
        n["PrivateIpAddress"]
            .as_str()
            .unwrap()
            .starts_with("10.20.1."),
        "{n}"
    );
    assert_eq!(n["Groups"][0]["GroupId"], sg, "{n}");
    let gone = aws_raw(
        &emu,
        &[
            "ec2",
            "describe-network-interfaces",
            "--network-interface-ids",
            eni,
        ],
    );
    assert!(
        !gone.status.success(),
        "the removed subnet's interface is gone"
    );
    // Private DNS turned on by ModifyVpcEndpoint needs the VPC's DNS attributes.
    emu.aws(&[
        "ec2",
        "modify-vpc-endpoint",
        "--vpc-endpoint-id",
        id,
        "--no-private-dns-enabled",
    ]);
    let e3 = emu.aws(&["ec2", "describe-vpc-endpoints", "--vpc-endpoint-ids", id]);
    assert_eq!(e3["VpcEndpoints"][0]["PrivateDnsEnabled"], false, "{e3}");
    emu.aws(&[
        "ec2",
        "modify-vpc-attribute",
        "--vpc-id",
        &w.vpc,
        "--no-enable-dns-hostnames",
    ]);
    let refused = aws_raw(
        &emu,
        &[
            "ec2",
            "modify-vpc-endpoint",
            "--vpc-endpoint-id",
            id,
            "--private-dns-enabled",
        ],
    );
    assert!(
        !refused.status.success() && err(&refused).contains("enableDnsHostnames"),
        "{}",
        err(&refused)
    );
    emu.aws(&[
        "ec2",
        "modify-vpc-attribute",
        "--vpc-id",
        &w.vpc,
        "--enable-dns-hostnames",
    ]);
    emu.aws(&[
        "ec2",
        "modify-vpc-endpoint",
        "--vpc-endpoint-id",
        id,
        "--private-dns-enabled",
    ]);
    let e3 = emu.aws(&["ec2", "describe-vpc-endpoints", "--vpc-endpoint-ids", id]);
    assert_eq!(e3["VpcEndpoints"][0]["PrivateDnsEnabled"], true, "{e3}");
    emu.aws(&["ec2", "delete-vpc-endpoints", "--vpc-endpoint-ids", id]);

    // Terminated, the instance's interface holds the group a moment longer.
    let id = i["InstanceId"].as_str().unwrap();
    emu.aws(&["ec2", "terminate-instances", "--instance-ids", id]);
    let early = aws_raw(&emu, &["ec2", "delete-security-group", "--group-id", sg]);
    assert!(
        !early.status.success() && err(&early).contains("DependencyViolation"),
        "{}",
        err(&early)
    );
    let start = std::time::Instant::now();
    loop {
        let o = aws_raw(&emu, &["ec2", "delete-security-group", "--group-id", sg]);
        if o.status.success() {
            break;
        }
        assert!(err(&o).contains("DependencyViolation"), "{}", err(&o));
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the interface never went"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn elastic_ips_sit_on_secondary_addresses_and_move_with_them() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let eni = |emu: &Emulator| {
        emu.aws(&[
            "ec2",
            "create-network-interface",
            "--subnet-id",
            &w.public_subnet,
        ])["NetworkInterface"]["NetworkInterfaceId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a, b) = (eni(&emu), eni(&emu));
    // An address neither interface holds (each got a free one of the subnet).
    let primaries: Vec<serde_json::Value> = [&a, &b]
        .iter()
        .map(|e| {
            emu.aws(&[
                "ec2",
                "describe-network-interfaces",
                "--network-interface-ids",
                e,
            ])["NetworkInterfaces"][0]["PrivateIpAddress"]
                .clone()
        })
        .collect();
    let ip = &(240..=250)
        .map(|h| format!("10.20.0.{h}"))
        .find(|ip| !primaries.iter().any(|p| p == ip.as_str()))
        .unwrap();
    let ip = ip.as_str();
    let assigned = emu.aws(&[
        "ec2",
        "assign-private-ip-addresses",
        "--network-interface-id",
        &a,
        "--private-ip-addresses",
        ip,
    ]);
    // The answer lists what this call assigned, not the primary address too.
    assert_eq!(
        assigned["AssignedPrivateIpAddresses"],
        serde_json::json!([{"PrivateIpAddress": ip}]),
        "{assigned}"
    );
    let counted = emu.aws(&[
        "ec2",
        "assign-private-ip-addresses",
        "--network-interface-id",
        &b,
        "--secondary-private-ip-address-count",
        "2",
    ]);
    let new: Vec<&str> = counted["AssignedPrivateIpAddresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["PrivateIpAddress"].as_str().unwrap())
        .collect();
    assert_eq!(new.len(), 2, "{counted}");
    assert!(!new.contains(&ip), "{counted}");
    let alloc = emu.aws(&["ec2", "allocate-address", "--domain", "vpc"]);
    let (alloc, public) = (
        alloc["AllocationId"].as_str().unwrap().to_string(),
        alloc["PublicIp"].as_str().unwrap().to_string(),
    );
    assert!(!public.starts_with("127."), "a public pool: {public}");
    emu.aws(&[
        "ec2",
        "associate-address",
        "--allocation-id",
        &alloc,
        "--network-interface-id",
        &a,
        "--private-ip-address",
        ip,
    ]);
    // On the secondary address, not the primary.
    let describe = |eni: &str| {
        emu.aws(&[
            "ec2",
            "describe-network-interfaces",
            "--network-interface-ids",
            eni,
        ])["NetworkInterfaces"][0]
            .clone()
    };
    let on = |n: &serde_json::Value| -> Option<String> {
        n["PrivateIpAddresses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["Association"]["PublicIp"] == public.as_str())
            .map(|x| x["PrivateIpAddress"].as_str().unwrap().to_string())
    };
    let n = describe(&a);
    assert_eq!(on(&n).as_deref(), Some(ip), "{n}");
    assert!(n["Association"].is_null(), "the primary keeps none: {n}");
    let addr = emu.aws(&["ec2", "describe-addresses", "--allocation-ids", &alloc]);
    assert_eq!(addr["Addresses"][0]["PrivateIpAddress"], ip, "{addr}");
    // Another interface cannot take the address without AllowReassignment.
    let take = |allow: bool| {
        let mut args = vec![
            "ec2",
            "assign-private-ip-addresses",
            "--network-interface-id",
            &b,
            "--private-ip-addresses",
            ip,
        ];
        if allow {
            args.push("--allow-reassignment");
        }
        aws_raw(&emu, &args)
    };
    let refused = take(false);
    assert!(
        !refused.status.success() && err(&refused).contains("PrivateIpAddressInUse"),
        "{}",
        err(&refused)
    );
    // An address of another subnet is never the interface's, moved or not (a pair
    // spread over two AZs cannot move its egress address).
    let foreign = aws_raw(
        &emu,
        &[
            "ec2",
            "assign-private-ip-addresses",
            "--network-interface-id",
            &b,
            "--private-ip-addresses",
            "10.20.250.9",
            "--allow-reassignment",
        ],
    );
    assert!(
        !foreign.status.success() && err(&foreign).contains("InvalidParameterValue"),
        "{}",
        err(&foreign)
    );
    // With it, the address moves, and its Elastic IP with it.
    assert!(take(true).status.success());
    assert_eq!(on(&describe(&b)).as_deref(), Some(ip));
    assert_eq!(on(&describe(&a)), None);
    let addr = emu.aws(&["ec2", "describe-addresses", "--allocation-ids", &alloc]);
    assert_eq!(
        addr["Addresses"][0]["NetworkInterfaceId"],
        b.as_str(),
        "{addr}"
    );
    // An Elastic IP moved to another interface's primary address leaves the old one.
    emu.aws(&[
        "ec2",
        "associate-address",
        "--allocation-id",
        &alloc,
        "--network-interface-id",
        &a,
        "--allow-reassociation",
    ]);
    assert_eq!(describe(&a)["Association"]["PublicIp"], public.as_str());
    assert_eq!(on(&describe(&b)), None);
}

/// AWS gives an address to one interface at a time and never one of a subnet's five
/// reserved addresses (the first four and the last: the VPC router is the first host);
/// a request the subnet cannot satisfy fails with InsufficientFreeAddressesInSubnet.
#[tokio::test]
async fn a_subnet_gives_each_address_once_and_never_a_reserved_one() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    // A /28: 16 addresses, 11 an interface may hold (.4 to .14).
    let subnet = emu.aws(&[
        "ec2",
        "create-subnet",
        "--vpc-id",
        &w.vpc,
        "--cidr-block",
        "10.20.200.0/28",
        "--availability-zone",
        "eu-west-1a",
    ])["Subnet"]["SubnetId"]
        .as_str()
        .unwrap()
        .to_string();
    let eni = || {
        emu.aws(&["ec2", "create-network-interface", "--subnet-id", &subnet])["NetworkInterface"]
            ["NetworkInterfaceId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let count = |eni: &str, n: usize| {
        aws_raw(
            &emu,
            &[
                "ec2",
                "assign-private-ip-addresses",
                "--network-interface-id",
                eni,
                "--secondary-private-ip-address-count",
                &n.to_string(),
            ],
        )
    };
    let held = |eni: &str| -> Vec<String> {
        emu.aws(&[
            "ec2",
            "describe-network-interfaces",
            "--network-interface-ids",
            eni,
        ])["NetworkInterfaces"][0]["PrivateIpAddresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["PrivateIpAddress"].as_str().unwrap().to_string())
            .collect()
    };
    let (a, b) = (eni(), eni());
    assert!(count(&a, 6).status.success());
    // b has 1 address, a 7: 3 of the 11 remain.
    let short = count(&b, 4);
    assert!(
        !short.status.success() && err(&short).contains("InsufficientFreeAddressesInSubnet"),
        "{}",
        err(&short)
    );
    assert!(count(&b, 3).status.success());
    let mut all: Vec<String> = held(&a).into_iter().chain(held(&b)).collect();
    all.sort_by_key(|ip| ip.parse::<std::net::Ipv4Addr>().unwrap());
    let usable: Vec<String> = (4..=14).map(|h| format!("10.20.200.{h}")).collect();
    assert_eq!(all, usable, "each usable address once, no reserved one");
    // The subnet is full.
    let full = count(&a, 1);
    assert!(
        err(&full).contains("InsufficientFreeAddressesInSubnet"),
        "{}",
        err(&full)
    );
    // A reserved address named explicitly is refused.
    let router = aws_raw(
        &emu,
        &[
            "ec2",
            "assign-private-ip-addresses",
            "--network-interface-id",
            &a,
            "--private-ip-addresses",
            "10.20.200.1",
        ],
    );
    assert!(
        !router.status.success() && err(&router).contains("reserved"),
        "{}",
        err(&router)
    );
    // An address given back is given again.
    let back = held(&a).into_iter().find(|ip| ip != &held(&a)[0]).unwrap();
    emu.aws(&[
        "ec2",
        "unassign-private-ip-addresses",
        "--network-interface-id",
        &a,
        "--private-ip-addresses",
        &back,
    ]);
    let again = emu.aws(&[
        "ec2",
        "assign-private-ip-addresses",
        "--network-interface-id",
        &b,
        "--secondary-private-ip-address-count",
        "1",
    ]);
    assert_eq!(
        again["AssignedPrivateIpAddresses"][0]["PrivateIpAddress"],
        back.as_str(),
        "{again}"
    );
}

/// The error code of a failed SDK call, or "ok".
fn code<T, E: aws_smithy_types::error::metadata::ProvideErrorMetadata>(r: &Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.code().unwrap_or("no code").to_string(),
    }
}

/// Each request is checked against the service's API model before it is carried out,
/// as AWS checks it: one malformed request of each protocol the project uses (ec2,
/// query, json, rest-json), through the Rust SDK as natctl and natd send them, each
/// refused with AWS's error and not carried out; a well-formed one passes.
#[tokio::test]
async fn every_request_is_checked_against_its_api_model() {
    use aws_sdk_ec2::types::{RequestLaunchTemplateData, VpcEndpointType};
    let emu = Emulator::start();
    let sdk = emu.sdk();
    let w = World::new(&sdk).await;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);

    // ec2: a required structure the SDK writes nothing for when it is empty.
    let r = ec2
        .create_launch_template()
        .launch_template_name("natd-empty")
        .launch_template_data(RequestLaunchTemplateData::builder().build())
        .send()
        .await;
    assert_eq!(code(&r), "MissingParameter", "{r:?}");
    let named = emu.aws(&[
        "ec2",
        "describe-launch-templates",
        "--filters",
        "Name=launch-template-name,Values=natd-empty",
    ]);
    assert_eq!(
        named["LaunchTemplates"],
        serde_json::json!([]),
        "not carried out"
    );
    // ec2: an enum value the model does not have.
    let r = ec2
        .create_vpc_endpoint()
        .vpc_id(&w.vpc)
        .service_name("com.amazonaws.eu-west-1.secretsmanager")
        .vpc_endpoint_type(VpcEndpointType::from("Wormhole"))
        .send()
        .await;
    assert_eq!(code(&r), "InvalidParameterValue", "{r:?}");
    let endpoints = emu.aws(&["ec2", "describe-vpc-endpoints"]);
    assert_eq!(endpoints["VpcEndpoints"], serde_json::json!([]));
    // ec2: well formed, with a client token: carried out once, answered twice.
    let good = || {
        ec2.create_launch_template()
            .launch_template_name("natd-good")
            .client_token("natd-fidelity-1")
            .launch_template_data(
                RequestLaunchTemplateData::builder()
                    .disable_api_termination(false)
                    .build(),
            )
            .send()
    };
    let first = good().await.expect("a valid request passes");
    let again = good()
        .await
        .expect("the same token answers the same template");
    let id = |r: &aws_sdk_ec2::operation::create_launch_template::CreateLaunchTemplateOutput| {
        r.launch_template()
            .and_then(|t| t.launch_template_id())
            .map(str::to_string)
    };
    assert_eq!(id(&first), id(&again));

    // query (Auto Scaling): a name longer than the model allows.
    let asg = aws_sdk_autoscaling::Client::new(&sdk);
    let long = "g".repeat(256);
    let r = asg
        .create_auto_scaling_group()
        .auto_scaling_group_name(&long)
        .min_size(0)
        .max_size(1)
        .vpc_zone_identifier(&w.public_subnet)
        .send()
        .await;
    assert_eq!(code(&r), "ValidationError", "{r:?}");
    let groups = emu.aws(&["autoscaling", "describe-auto-scaling-groups"]);
    assert_eq!(groups["AutoScalingGroups"], serde_json::json!([]));
    // query (IAM): a required member missing.
    let iam = aws_sdk_iam::Client::new(&sdk);
    let r = iam.create_role().role_name("natd-no-trust").send().await;
    assert_eq!(code(&r), "ValidationError", "{r:?}");
    let roles = emu.aws(&["iam", "list-roles"]);
    assert!(
        !roles.to_string().contains("natd-no-trust"),
        "not carried out: {roles}"
    );

    // json (Secrets Manager): a number out of range, a name too long.
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let r = sm.list_secrets().max_results(1000).send().await;
    assert_eq!(code(&r), "ValidationException", "{r:?}");
    let r = sm
        .create_secret()
        .name("s".repeat(513))
        .secret_string("x")
        .send()
        .await;
    assert_eq!(code(&r), "ValidationException", "{r:?}");
    let secrets = emu.aws(&["secretsmanager", "list-secrets"]);
    assert_eq!(secrets["SecretList"], serde_json::json!([]));

    // rest-json (Lambda): a number out of range in the body, one in the query string.
    let lambda = aws_sdk_lambda::Client::new(&sdk);
    let r = lambda
        .update_function_configuration()
        .function_name("natd-fn")
        .timeout(0)
        .send()
        .await;
    assert_eq!(code(&r), "InvalidParameterValueException", "{r:?}");
    let r = lambda.list_functions().max_items(100_000).send().await;
    assert_eq!(code(&r), "InvalidParameterValueException", "{r:?}");

    let refused: Vec<(String, String)> = emu
        .refused()
        .iter()
        .map(|r| {
            (
                r["op"].as_str().unwrap_or_default().to_string(),
                r["code"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(refused.len(), 8, "{refused:?}");
    assert!(refused.contains(&("CreateLaunchTemplate".into(), "MissingParameter".into())));
    assert!(refused.contains(&("CreateRole".into(), "ValidationError".into())));
}

fn run_instance(emu: &Emulator, subnet: &str, kind: &str) -> (String, String) {
    let r = emu.aws(&[
        "ec2",
        "run-instances",
        "--image-id",
        IMAGE,
        "--instance-type",
        kind,
        "--subnet-id",
        subnet,
        "--count",
        "1",
    ]);
    let i = &r["Instances"][0];
    (
        i["InstanceId"].as_str().unwrap().to_string(),
        i["NetworkInterfaces"][0]["NetworkInterfaceId"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

/// The limits AWS enforces: IPv4 addresses per interface and interfaces per instance by
/// instance type, Elastic IPs per region (the account attribute says the quota), NAT
/// gateways per AZ, interface endpoints per VPC, rules per security group; each refused
/// with AWS's error code.
#[tokio::test]
async fn limits_are_enforced_as_aws_enforces_them() {
    let emu = Emulator::start_env(
        None,
        &[
            ("NATD_EMU_MAX_EIPS", "7"),
            ("NATD_EMU_MAX_NAT_PER_AZ", "2"),
            ("NATD_EMU_MAX_INTERFACE_ENDPOINTS", "1"),
            ("NATD_EMU_NAT_PENDING_SECS", "0"),
        ],
    );
    let w = World::new(&emu.sdk()).await;
    let assign = |eni: &str, n: u32| {
        aws_raw(
            &emu,
            &[
                "ec2",
                "assign-private-ip-addresses",
                "--network-interface-id",
                eni,
                "--secondary-private-ip-address-count",
                &n.to_string(),
            ],
        )
    };
    // A t4g.micro holds 2 IPv4 addresses per interface: one secondary.
    let (micro, micro_eni) = run_instance(&emu, &w.public_subnet, "t4g.micro");
    assert!(assign(&micro_eni, 1).status.success());
    let over = assign(&micro_eni, 1);
    assert!(
        !over.status.success() && err(&over).contains("PrivateIpAddressLimitExceeded"),
        "{}",
        err(&over)
    );
    // A t4g.small holds 4: three secondary.
    let (_, small_eni) = run_instance(&emu, &w.public_subnet, "t4g.small");
    assert!(assign(&small_eni, 3).status.success());
    assert!(!assign(&small_eni, 1).status.success());
    // A t4g.micro takes 2 interfaces.
    let eni = || {
        emu.aws(&[
            "ec2",
            "create-network-interface",
            "--subnet-id",
            &w.public_subnet,
        ])["NetworkInterface"]["NetworkInterfaceId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let attach = |eni: &str, index: &str| {
        aws_raw(
            &emu,
            &[
                "ec2",
                "attach-network-interface",
                "--network-interface-id",
                eni,
                "--instance-id",
                &micro,
                "--device-index",
                index,
            ],
        )
    };
    assert!(attach(&eni(), "1").status.success());
    let third = attach(&eni(), "2");
    assert!(
        !third.status.success() && err(&third).contains("AttachmentLimitExceeded"),
        "{}",
        err(&third)
    );

    // Elastic IPs: the quota the account attribute answers, counting all the account holds.
    let attrs = emu.aws(&[
        "ec2",
        "describe-account-attributes",
        "--attribute-names",
        "vpc-max-elastic-ips",
    ]);
    assert_eq!(
        attrs["AccountAttributes"][0]["AttributeValues"][0]["AttributeValue"],
        "7"
    );
    let allocate = || aws_raw(&emu, &["ec2", "allocate-address", "--domain", "vpc"]);
    let mut allocations = Vec::new();
    for _ in 0..7 {
        let o = allocate();
        assert!(o.status.success(), "{}", err(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        allocations.push(v["AllocationId"].as_str().unwrap().to_string());
    }
    let eighth = allocate();
    assert!(
        !eighth.status.success() && err(&eighth).contains("AddressLimitExceeded"),
        "{}",
        err(&eighth)
    );

    // NAT gateways per AZ (2 here).
    let nat = |alloc: &str| {
        aws_raw(
            &emu,
            &[
                "ec2",
                "create-nat-gateway",
                "--subnet-id",
                &w.public_subnet,
                "--allocation-id",
                alloc,
            ],
        )
    };
    assert!(nat(&allocations[0]).status.success());
    assert!(nat(&allocations[1]).status.success());
    let third = nat(&allocations[2]);
    assert!(
        !third.status.success() && err(&third).contains("NatGatewayLimitExceeded"),
        "{}",
        err(&third)
    );

    // Interface endpoints per VPC (1 here).
    let endpoint = |service: &str| {
        aws_raw(
            &emu,
            &[
                "ec2",
                "create-vpc-endpoint",
                "--vpc-id",
                &w.vpc,
                "--vpc-endpoint-type",
                "Interface",
                "--service-name",
                &format!("com.amazonaws.{REGION}.{service}"),
                "--subnet-ids",
                &w.private_subnets[0],
                "--no-private-dns-enabled",
            ],
        )
    };
    assert!(endpoint("secretsmanager").status.success());
    let second = endpoint("sts");
    assert!(
        !second.status.success() && err(&second).contains("VpcEndpointLimitExceeded"),
        "{}",
        err(&second)
    );

    // Rules per security group: 60 inbound.
    let sg = emu.aws(&[
        "ec2",
        "create-security-group",
        "--group-name",
        "natd-full",
        "--description",
        "full",
        "--vpc-id",
        &w.vpc,
    ])["GroupId"]
        .as_str()
        .unwrap()
        .to_string();
    let ranges: Vec<String> = (0..61)
        .map(|i| format!("{{CidrIp=10.99.{i}.0/24}}"))
        .collect();
    let full = aws_raw(
        &emu,
        &[
            "ec2",
            "authorize-security-group-ingress",
            "--group-id",
            &sg,
            "--ip-permissions",
            &format!(
                "IpProtocol=tcp,FromPort=443,ToPort=443,IpRanges=[{}]",
                ranges.join(",")
            ),
        ],
    );
    assert!(
        !full.status.success() && err(&full).contains("RulesPerSecurityGroupLimitExceeded"),
        "{}",
        err(&full)
    );
}

/// EC2 is eventually consistent ("the result of an API command ... might not be
/// immediately visible to all subsequent commands", AWS's EC2 developer guide): natd's
/// reads answer the state as it was a window ago; the tests' own reads (no "app/natd"
/// in their user agent) see the truth at once.
#[tokio::test]
async fn natds_reads_see_a_change_only_after_the_consistency_window() {
    let emu = Emulator::start_env(None, &[("NATD_EMU_STALE_SECS", "2")]);
    let sdk = emu.sdk();
    let w = World::new(&sdk).await;
    let natd = aws_sdk_ec2::Client::new(&emu.sdk_as_natd());
    let table = w
        .ec2
        .create_route_table()
        .vpc_id(&w.vpc)
        .send()
        .await
        .unwrap()
        .route_table
        .unwrap()
        .route_table_id
        .unwrap();
    let routes = |c: aws_sdk_ec2::Client, t: String| async move {
        c.describe_route_tables()
            .route_table_ids(t)
            .send()
            .await
            .unwrap()
            .route_tables()[0]
            .routes()
            .iter()
            .filter_map(|r| r.destination_cidr_block().map(str::to_string))
            .collect::<Vec<_>>()
    };
    // Two seconds after the table's creation: natd reads it as it is.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        !routes(natd.clone(), table.clone())
            .await
            .contains(&"0.0.0.0/0".to_string())
    );
    w.ec2
        .create_route()
        .route_table_id(&table)
        .destination_cidr_block("0.0.0.0/0")
        .gateway_id(&w.igw)
        .send()
        .await
        .unwrap();
    let changed = std::time::Instant::now();
    assert!(
        routes(w.ec2.clone(), table.clone())
            .await
            .contains(&"0.0.0.0/0".to_string()),
        "the tests' own read sees the route at once"
    );
    assert!(
        !routes(natd.clone(), table.clone())
            .await
            .contains(&"0.0.0.0/0".to_string()),
        "natd's read, right after the change, answers the state before it"
    );
    let (window, served) = emu.stale_served();
    assert_eq!(window, 2.0);
    assert!(served >= 1, "the stale answer is counted");
    loop {
        if routes(natd.clone(), table.clone())
            .await
            .contains(&"0.0.0.0/0".to_string())
        {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(4),
            "the change shows once the window has passed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        changed.elapsed() >= Duration::from_millis(1900),
        "natd saw the change {:?} after it, inside the 2 s window",
        changed.elapsed()
    );
}

#[tokio::test]
async fn a_name_unique_create_succeeds_once_however_many_ask_at_once() {
    // natctl's stack lock is a launch template's name: AWS lets one of any number of
    // concurrent CreateLaunchTemplate calls with that name succeed. Each round sends
    // eight at once, from eight clients (eight connections).
    let emu = Emulator::start();
    let clients: Vec<_> = (0..8)
        .map(|_| aws_sdk_ec2::Client::new(&emu.sdk()))
        .collect();
    for round in 0..25 {
        let name = format!("natd-race-{round}-lock");
        let tries: Vec<_> = clients
            .iter()
            .map(|c| {
                let (c, name) = (c.clone(), name.clone());
                tokio::spawn(async move {
                    let r = c
                        .create_launch_template()
                        .launch_template_name(name)
                        .launch_template_data(
                            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                                .disable_api_termination(false)
                                .build(),
                        )
                        .send()
                        .await;
                    code(&r)
                })
            })
            .collect();
        let mut won = 0;
        for t in tries {
            match t.await.unwrap().as_str() {
                "ok" => won += 1,
                c => assert!(c.contains("AlreadyExists"), "round {round}: {c}"),
            }
        }
        assert_eq!(won, 1, "round {round}: {won} creates of {name} succeeded");
    }
}

fn datum(name: &str, dims: usize) -> aws_sdk_cloudwatch::types::MetricDatum {
    let mut d = aws_sdk_cloudwatch::types::MetricDatum::builder()
        .metric_name(name)
        .value(1.0);
    for i in 0..dims {
        d = d.dimensions(
            aws_sdk_cloudwatch::types::Dimension::builder()
                .name(format!("D{i}"))
                .value("v")
                .build(),
        );
    }
    d.build()
}

/// CloudWatch through the Rust SDK (Smithy RPC v2 CBOR, as it calls CloudWatch):
/// PutMetricData's limits are AWS's (1,000 metrics a request, 30 dimensions, no point
/// older than two weeks), and alarms are evaluated on their metric: a breaching sum
/// fires one, a quiet one stays OK, and a state set by hand lasts until the next
/// evaluation.
#[tokio::test]
async fn cloudwatch_refuses_what_aws_refuses_and_evaluates_alarms() {
    let emu = Emulator::start_env(None, &[("NATD_EMU_ALARM_EVAL_SECS", "2")]);
    let cw = aws_sdk_cloudwatch::Client::new(&emu.sdk());
    let put = |data: Vec<aws_sdk_cloudwatch::types::MetricDatum>| {
        cw.put_metric_data()
            .namespace("natd")
            .set_metric_data(Some(data))
            .send()
    };
    put((0..1000).map(|_| datum("A", 1)).collect())
        .await
        .expect("1,000 metrics in one request");
    let r = put((0..1001).map(|_| datum("A", 1)).collect()).await;
    assert_eq!(code(&r), "InvalidParameterValue");
    put(vec![datum("A", 30)]).await.expect("30 dimensions");
    assert_eq!(
        code(&put(vec![datum("A", 31)]).await),
        "InvalidParameterValue"
    );
    let old = aws_sdk_cloudwatch::types::MetricDatum::builder()
        .metric_name("A")
        .value(1.0)
        .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from(
            std::time::SystemTime::now() - Duration::from_secs(15 * 24 * 3600),
        ))
        .build();
    assert_eq!(code(&put(vec![old]).await), "InvalidParameterValue");

    let alarm = |name: &'static str, metric: &'static str| {
        cw.put_metric_alarm()
            .alarm_name(name)
            .namespace("natd")
            .metric_name(metric)
            .statistic(aws_sdk_cloudwatch::types::Statistic::Sum)
            .comparison_operator(
                aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold,
            )
            .threshold(0.0)
            .period(60)
            .evaluation_periods(1)
            .treat_missing_data("notBreaching")
            .dimensions(
                aws_sdk_cloudwatch::types::Dimension::builder()
                    .name("StackName")
                    .value("s")
                    .build(),
            )
            .send()
    };
    alarm("fires", "ErrorPortAllocation").await.unwrap();
    alarm("quiet", "AllowanceExceeded").await.unwrap();
    let state = |name: &'static str| {
        let cw = cw.clone();
        async move {
            cw.describe_alarms()
                .alarm_names(name)
                .send()
                .await
                .unwrap()
                .metric_alarms()[0]
                .state_value()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default()
        }
    };
    let errors = aws_sdk_cloudwatch::types::MetricDatum::builder()
        .metric_name("ErrorPortAllocation")
        .value(3.0)
        .dimensions(
            aws_sdk_cloudwatch::types::Dimension::builder()
                .name("StackName")
                .value("s")
                .build(),
        )
        .build();
    put(vec![errors]).await.unwrap();
    natd_tests::eventually(Duration::from_secs(10), "the alarm fires", || async {
        (state("fires").await == "ALARM").then_some(())
    })
    .await;
    assert_eq!(state("quiet").await, "OK");
    cw.set_alarm_state()
        .alarm_name("quiet")
        .state_value(aws_sdk_cloudwatch::types::StateValue::Alarm)
        .state_reason("testing")
        .send()
        .await
        .unwrap();
    assert_eq!(state("quiet").await, "ALARM", "set by hand");
    natd_tests::eventually(
        Duration::from_secs(10),
        "back to its actual state",
        || async { (state("quiet").await == "OK").then_some(()) },
    )
    .await;
}
