//! `natctl setup --env prod` and the switches between dev and prod, against the
//! emulator, checked with the AWS CLI (an independent client).

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::cli::{command, natctl, snapshot, stdout, take_over_like_natd};
use natd_tests::emulator::{Emulator, is_mutating};
use natd_tests::world::{IMAGE, World, text};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The stack's NAT gateways that are not deleted: subnet -> (gateway, allocation).
fn gateways(emu: &Emulator, stack: &str) -> BTreeMap<String, (String, String)> {
    let filter = format!("Name=tag:natd:stack,Values={stack}");
    let g = emu.aws(&["ec2", "describe-nat-gateways", "--filter", &filter]);
    g["NatGateways"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["State"] != "deleted")
        .map(|g| {
            assert_eq!(g["State"], "available");
            (
                g["SubnetId"].as_str().unwrap().to_string(),
                (
                    g["NatGatewayId"].as_str().unwrap().to_string(),
                    g["NatGatewayAddresses"][0]["AllocationId"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ),
            )
        })
        .collect()
}

/// The default route target of the table `subnet` is explicitly associated with.
fn subnet_default_target(emu: &Emulator, subnet: &str) -> Option<String> {
    let filter = format!("Name=association.subnet-id,Values={subnet}");
    let t = emu.aws(&["ec2", "describe-route-tables", "--filters", &filter]);
    let table = t["RouteTables"].as_array().unwrap().first()?.clone();
    table["Routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["DestinationCidrBlock"] == "0.0.0.0/0")
        .and_then(|r| r["NatGatewayId"].as_str())
        .map(str::to_string)
}

#[tokio::test]
async fn setup_prod_builds_a_gateway_per_az_with_az_local_routes() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let public_b = w.public_subnet_b().await;
    let before_setup = snapshot(&emu, &w.vpc);
    let setup = ["setup", "--env", "prod", "--vpc", &w.vpc, "--name", "p1"];
    let out = natctl(&emu, &setup);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("Plan for stack p1 (prod)")
            && String::from_utf8_lossy(&out.stderr).contains("available"),
        "plan shown and waiting reported: {}",
        text(&out)
    );

    // One available gateway in each AZ's public subnet, each with its own address.
    let gws = gateways(&emu, "p1");
    assert_eq!(
        gws.keys().cloned().collect::<Vec<_>>(),
        {
            let mut v = vec![w.public_subnet.clone(), public_b.clone()];
            v.sort();
            v
        },
        "{gws:?}"
    );
    assert!(
        gws.values()
            .all(|(_, alloc)| alloc.starts_with("eipalloc-"))
    );
    assert_ne!(gws[&w.public_subnet].1, gws[&public_b].1);
    // The private subnets shared the main table across AZs: each now has its own table
    // routing to the gateway of its own AZ.
    assert_eq!(
        subnet_default_target(&emu, &w.private_subnets[0]).as_deref(),
        Some(gws[&w.public_subnet].0.as_str()),
        "AZ a routes to AZ a's gateway"
    );
    assert_eq!(
        subnet_default_target(&emu, &w.private_subnets[1]).as_deref(),
        Some(gws[&public_b].0.as_str()),
        "AZ b routes to AZ b's gateway"
    );
    let tagged = emu.aws(&[
        "ec2",
        "describe-route-tables",
        "--filters",
        "Name=tag:natd:routes,Values=p1",
    ]);
    assert_eq!(tagged["RouteTables"].as_array().unwrap().len(), 2);

    // Again: nothing to change, and not one mutating call.
    let before = emu.calls().len();
    let again = natctl(&emu, &setup);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        stdout(&again).trim(),
        "No changes necessary.",
        "{}",
        text(&again)
    );
    let calls = emu.calls();
    let mutating: Vec<&String> = calls[before..].iter().filter(|c| is_mutating(c)).collect();
    assert!(calls.len() > before, "the re-run read the state");
    assert!(mutating.is_empty(), "re-run mutated: {mutating:?}");

    // status: per AZ, the gateway and the route.
    let st = natctl(&emu, &["status", "--name", "p1", "--output", "json"]);
    assert!(st.status.success(), "{}", text(&st));
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["healthy"], true, "{v}");
    assert_eq!(v["gateways"].as_array().unwrap().len(), 2, "{v}");

    // doctor finds nothing wrong with a prod stack natctl built.
    let d = natctl(&emu, &["doctor", "--vpc", &w.vpc]);
    assert_eq!(d.status.code(), Some(0), "{}", text(&d));
    assert!(stdout(&d).contains("no problem found"), "{}", text(&d));

    // Another stack in another VPC.
    let other = World::new(&emu.sdk()).await;
    other.public_subnet_b().await;
    let out = natctl(
        &emu,
        &[
            "setup", "--env", "prod", "--vpc", &other.vpc, "--name", "p2",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));

    // Teardown puts the VPC back as it was before setup, and leaves the other stack.
    let out = natctl(&emu, &["teardown", "--name", "p1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(gateways(&emu, "p1").is_empty());
    assert_eq!(
        gateways(&emu, "p2").len(),
        2,
        "the other stack keeps its gateways"
    );
    let out = natctl(&emu, &["teardown", "--name", "p2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(snapshot(&emu, &w.vpc), before_setup);
    let again = natctl(&emu, &["teardown", "--name", "p1"]);
    assert_eq!(
        stdout(&again).trim(),
        "Nothing to remove for stack p1.",
        "{}",
        text(&again)
    );
}

/// (subnet, table it routes by, its default route: (target, state)).
type Sample = (String, String, Option<(String, String)>);

/// Samples, for each private subnet, the default route of the table it routes by,
/// every few milliseconds until `stop`.
async fn record(w: World, stop: Arc<AtomicBool>) -> Vec<Sample> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        for s in &w.private_subnets {
            let (table, route) = w.effective_route(s).await;
            samples.push((s.clone(), table, route));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    samples
}

fn assert_never_without_default_route(samples: &[Sample], from: &str, to: &str) {
    assert!(samples.len() >= 10, "too few samples: {}", samples.len());
    for (subnet, table, route) in samples {
        match route {
            Some((target, state)) if state == "active" && !target.is_empty() => {}
            other => panic!("{subnet} (table {table}) had no working default route: {other:?}"),
        }
    }
    let targets: Vec<&str> = samples
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().map(|(t, _)| t.as_str()))
        .collect();
    assert!(
        targets.iter().any(|t| t.starts_with(from)) && targets.iter().any(|t| t.starts_with(to)),
        "the recording spans the switch from {from} to {to}: {targets:?}"
    );
}

#[tokio::test]
async fn switching_dev_to_prod_and_back_never_leaves_a_subnet_without_a_default_route() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    w.public_subnet_b().await;
    let before = snapshot(&emu, &w.vpc);
    let dev = [
        "setup",
        "--env",
        "dev",
        "--vpc",
        &w.vpc,
        "--name",
        "sw",
        "--ami",
        IMAGE,
        "--drain-seconds",
        "1",
    ];
    let out = natctl(&emu, &dev);
    assert!(out.status.success(), "{}", text(&out));
    let (instance, ..) = take_over_like_natd(&emu, &w, "sw").await;

    // dev -> prod, recording every private subnet's default route meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = tokio::spawn(record(w.clone(), stop.clone()));
    let mut prod = command(
        &emu,
        &[
            "setup",
            "--env",
            "prod",
            "--vpc",
            &w.vpc,
            "--name",
            "sw",
            "--drain-seconds",
            "1",
        ],
    );
    let out = tokio::task::spawn_blocking(move || prod.output().unwrap())
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let samples = recorder.await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("remove the dev egress"),
        "{}",
        text(&out)
    );
    assert_never_without_default_route(&samples, "eni-", "nat-");
    // The dev egress is gone.
    assert_eq!(
        emu.aws(&["autoscaling", "describe-auto-scaling-groups"])["AutoScalingGroups"],
        serde_json::json!([])
    );
    assert_eq!(w.instance_state(&instance).await, "terminated");
    assert_eq!(gateways(&emu, "sw").len(), 2);

    // prod -> dev: natctl waits for natd to hold the routes before it removes the
    // gateways. Here the test plays natd once the new instance and tags exist.
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = tokio::spawn(record(w.clone(), stop.clone()));
    let mut back = command(&emu, &dev)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if std::time::Instant::now() > deadline {
            let _ = back.kill();
            let out = back.wait_with_output().unwrap();
            panic!("no instance and tags after 60 s: {}", text(&out));
        }
        if back.try_wait().unwrap().is_some() {
            let out = back.wait_with_output().unwrap();
            panic!("natctl ended before natd took over: {}", text(&out));
        }
        let g = emu.aws(&["autoscaling", "describe-auto-scaling-groups"]);
        let tagged = emu.aws(&[
            "ec2",
            "describe-route-tables",
            "--filters",
            "Name=tag:natd:egress,Values=sw",
        ]);
        if g["AutoScalingGroups"][0]["Instances"][0]["InstanceId"].is_string()
            && tagged["RouteTables"].as_array().unwrap().len() == 2
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        back.try_wait().unwrap().is_none(),
        "natctl waits for natd before removing the gateways"
    );
    assert_eq!(
        gateways(&emu, "sw").len(),
        2,
        "gateways stay until natd holds the routes"
    );
    take_over_like_natd(&emu, &w, "sw").await;
    let out = tokio::task::spawn_blocking(move || back.wait_with_output().unwrap())
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let samples = recorder.await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_never_without_default_route(&samples, "nat-", "eni-");
    assert!(gateways(&emu, "sw").is_empty(), "prod egress removed");

    // Teardown: the VPC as it was.
    let out = natctl(&emu, &["teardown", "--name", "sw"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(snapshot(&emu, &w.vpc), before);
}

#[tokio::test]
async fn prod_refuses_an_az_without_a_public_subnet_before_creating_anything() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let before = snapshot(&emu, &w.vpc);
    let out = natctl(
        &emu,
        &["setup", "--env", "prod", "--vpc", &w.vpc, "--name", "p1"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("eu-west-1b") && err.contains(&w.private_subnets[1]),
        "names the AZ and its subnet: {err}"
    );
    assert_eq!(snapshot(&emu, &w.vpc), before);
}

#[tokio::test]
async fn a_setup_killed_half_way_converges_without_duplicates() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    w.public_subnet_b().await;
    let args = ["setup", "--env", "prod", "--vpc", &w.vpc, "--name", "cut"];
    let associations = |emu: &Emulator| {
        emu.calls()
            .iter()
            .filter(|c| *c == "AssociateRouteTable")
            .count()
    };
    let before = associations(&emu);
    // Kill natctl as soon as it reports its first NAT gateway.
    let mut run = command(&emu, &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(run.stderr.take().unwrap()));
    let line = lines
        .find(|l| l.as_ref().is_ok_and(|l| l.contains("created NAT gateway")))
        .expect("natctl reports the gateway")
        .unwrap();
    run.kill().unwrap();
    run.wait().unwrap();
    eprintln!("killed after: {line}");
    let moved = associations(&emu) - before;
    assert!(
        moved < 2,
        "killed before it finished ({moved} subnets moved)"
    );

    let out = natctl(&emu, &args);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(gateways(&emu, "cut").len(), 2, "one per AZ, no duplicate");
    let addresses = emu.aws(&[
        "ec2",
        "describe-addresses",
        "--filters",
        "Name=tag:natd:stack,Values=cut",
    ]);
    assert_eq!(addresses["Addresses"].as_array().unwrap().len(), 2);
    let again = natctl(&emu, &args);
    assert_eq!(
        stdout(&again).trim(),
        "No changes necessary.",
        "{}",
        text(&again)
    );
}

#[tokio::test]
async fn dev_with_eip_gets_an_address_natd_holds_and_teardown_releases_it() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let args = [
        "setup", "--env", "dev", "--vpc", &w.vpc, "--name", "ip", "--ami", IMAGE, "--eip",
    ];
    let out = natctl(&emu, &args);
    assert!(out.status.success(), "{}", text(&out));
    let a = emu.aws(&[
        "ec2",
        "describe-addresses",
        "--filters",
        "Name=tag:natd:egress,Values=ip",
    ]);
    assert_eq!(a["Addresses"].as_array().unwrap().len(), 1, "{a}");
    let again = natctl(&emu, &args);
    assert_eq!(
        stdout(&again).trim(),
        "No changes necessary.",
        "{}",
        text(&again)
    );
    // --eip is a dev option: prod refuses it before doing anything.
    let out = natctl(
        &emu,
        &[
            "setup", "--env", "prod", "--vpc", &w.vpc, "--name", "ip", "--eip",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--eip"));
    let out = natctl(&emu, &["teardown", "--name", "ip"]);
    assert!(out.status.success(), "{}", text(&out));
    let a = emu.aws(&["ec2", "describe-addresses"]);
    assert_eq!(a["Addresses"], serde_json::json!([]), "released");
}

#[tokio::test]
async fn two_setups_at_once_build_one_stack_not_two() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    w.public_subnet_b().await;
    let args = ["setup", "--env", "prod", "--vpc", &w.vpc, "--name", "twice"];
    let spawn = || {
        command(&emu, &args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let both = format!("first run:\n{}\nsecond run:\n{}", text(&a), text(&b));
    assert!(a.status.success() && b.status.success(), "{both}");
    // (One of them usually waits for the other's lock; on a slow machine the second
    // may start after the first is done and find nothing to do. Either way, one stack.)
    assert_eq!(gateways(&emu, "twice").len(), 2, "one gateway per AZ");
    let filter = "Name=tag:natd:stack,Values=twice";
    let addresses = emu.aws(&["ec2", "describe-addresses", "--filters", filter]);
    assert_eq!(addresses["Addresses"].as_array().unwrap().len(), 2);
    // The lock is gone with both runs, and a third run has nothing to do.
    let lt = emu.aws(&["ec2", "describe-launch-templates"]);
    assert_eq!(lt["LaunchTemplates"], serde_json::json!([]), "{lt}");
    let again = natctl(&emu, &args);
    assert_eq!(
        stdout(&again).trim(),
        "No changes necessary.",
        "{}",
        text(&again)
    );
}

#[tokio::test]
async fn a_rerun_reports_duplicates_it_did_not_make() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    w.public_subnet_b().await;
    let args = ["setup", "--env", "prod", "--vpc", &w.vpc, "--name", "dup"];
    let out = natctl(&emu, &args);
    assert!(out.status.success(), "{}", text(&out));
    // Something else (an older natctl racing itself) left a second address and gateway
    // in AZ a, tagged for the stack.
    let tags =
        "ResourceType=elastic-ip,Tags=[{Key=natd:stack,Value=dup},{Key=natd:az,Value=eu-west-1a}]";
    let extra = emu.aws(&[
        "ec2",
        "allocate-address",
        "--domain",
        "vpc",
        "--tag-specifications",
        tags,
    ]);
    let alloc = extra["AllocationId"].as_str().unwrap().to_string();
    let gw_tags =
        "ResourceType=natgateway,Tags=[{Key=natd:stack,Value=dup},{Key=natd:az,Value=eu-west-1a}]";
    emu.aws(&[
        "ec2",
        "create-nat-gateway",
        "--subnet-id",
        &w.public_subnet,
        "--allocation-id",
        &alloc,
        "--tag-specifications",
        gw_tags,
    ]);
    // Once the extra gateway is available too, the routes still stay where they are.
    natd_tests::eventually(
        std::time::Duration::from_secs(20),
        "the extra gateway",
        || async {
            let filter = "Name=state,Values=available";
            let g = emu.aws(&["ec2", "describe-nat-gateways", "--filter", filter]);
            (g["NatGateways"].as_array().unwrap().len() == 3).then_some(())
        },
    )
    .await;
    let again = natctl(&emu, &args);
    assert!(again.status.success(), "{}", text(&again));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("duplicate NAT gateway"), "{err}");
    assert!(
        err.contains("duplicate Elastic IP") || err.contains(&alloc),
        "{err}"
    );
    assert_eq!(
        stdout(&again).trim(),
        "No changes necessary.",
        "{}",
        text(&again)
    );
}
