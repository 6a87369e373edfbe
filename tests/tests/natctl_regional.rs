//! `natctl setup --env prod --gateway regional` and the switches between regional and
//! zonal NAT gateways, against the emulator, checked with the AWS CLI (an independent
//! client) while every private subnet's default route is sampled.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::cli::{command, natctl, snapshot, stdout};
use natd_tests::emulator::{Emulator, is_mutating};
use natd_tests::world::{World, text};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The stack's NAT gateways that are not deleted, as the AWS CLI reads them:
/// (id, AvailabilityMode, SubnetId, state).
fn gateways(emu: &Emulator, stack: &str) -> Vec<(String, String, Option<String>, String)> {
    let filter = format!("Name=tag:natd:stack,Values={stack}");
    let g = emu.aws(&["ec2", "describe-nat-gateways", "--filter", &filter]);
    g["NatGateways"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["State"] != "deleted")
        .map(|g| {
            (
                g["NatGatewayId"].as_str().unwrap().to_string(),
                g["AvailabilityMode"]
                    .as_str()
                    .unwrap_or("zonal")
                    .to_string(),
                g["SubnetId"].as_str().map(str::to_string),
                g["State"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The stack's Elastic IPs.
fn addresses(emu: &Emulator, stack: &str) -> usize {
    let filter = format!("Name=tag:natd:stack,Values={stack}");
    emu.aws(&["ec2", "describe-addresses", "--filters", &filter])["Addresses"]
        .as_array()
        .unwrap()
        .len()
}

/// (subnet, table it routes by, its default route: (target, state)).
type Sample = (String, String, Option<(String, String)>);

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

/// Every sample had an active default route to a NAT gateway, and the recording saw
/// both the gateways it switched from and the ones it switched to.
fn assert_never_without_default_route(samples: &[Sample], from: &[String], to: &[String]) {
    assert!(samples.len() >= 10, "too few samples: {}", samples.len());
    for (subnet, table, route) in samples {
        match route {
            Some((target, state)) if state == "active" && target.starts_with("nat-") => {}
            other => panic!("{subnet} (table {table}) had no working default route: {other:?}"),
        }
    }
    let seen = |ids: &[String]| {
        samples
            .iter()
            .any(|(_, _, r)| r.as_ref().is_some_and(|(t, _)| ids.contains(t)))
    };
    assert!(
        seen(from) && seen(to),
        "the recording spans the switch from {from:?} to {to:?}"
    );
}

/// Runs `args` while recording every private subnet's route.
async fn switch(emu: &Emulator, w: &World, args: &[&str]) -> (std::process::Output, Vec<Sample>) {
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = tokio::spawn(record(w.clone(), stop.clone()));
    let mut cmd = command(emu, args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    (out, recorder.await.unwrap())
}

fn ids(g: &[(String, String, Option<String>, String)]) -> Vec<String> {
    g.iter().map(|g| g.0.clone()).collect()
}

#[tokio::test]
async fn regional_gateway_is_built_read_back_and_switched_to_zonal_and_back_without_a_gap() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    w.public_subnet_b().await;
    let before_setup = snapshot(&emu, &w.vpc);
    let regional = [
        "setup",
        "--env",
        "prod",
        "--gateway",
        "regional",
        "--vpc",
        &w.vpc,
        "--name",
        "rg",
        "--drain-seconds",
        "1",
    ];
    let out = natctl(&emu, &regional);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("regional NAT gateway"),
        "the plan names it: {}",
        text(&out)
    );

    // One regional gateway, no subnet, available, no Elastic IP of the stack's; every
    // private subnet (two AZs sharing the main table) routes to it.
    let g = gateways(&emu, "rg");
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0].1, "regional");
    assert_eq!(g[0].2, None, "a regional gateway has no subnet");
    assert_eq!(g[0].3, "available");
    assert_eq!(addresses(&emu, "rg"), 0);
    for s in &w.private_subnets {
        let (_, route) = w.effective_route(s).await;
        assert_eq!(
            route,
            Some((g[0].0.clone(), "active".to_string())),
            "{s} routes to the regional gateway"
        );
    }

    // Again, with or without --gateway: nothing to change, not one mutating call.
    for args in [&regional[..], &regional[..3]] {
        let mut args = args.to_vec();
        if args.len() == 3 {
            args.extend(["--vpc", &w.vpc, "--name", "rg"]);
        }
        let before = emu.calls().len();
        let again = natctl(&emu, &args);
        assert!(again.status.success(), "{}", text(&again));
        assert_eq!(
            stdout(&again).trim(),
            "No changes necessary.",
            "{}",
            text(&again)
        );
        let calls = emu.calls();
        let mutating: Vec<&String> = calls[before..].iter().filter(|c| is_mutating(c)).collect();
        assert!(mutating.is_empty(), "re-run {args:?} mutated: {mutating:?}");
    }

    // status and doctor know a regional gateway.
    let st = natctl(&emu, &["status", "--name", "rg", "--output", "json"]);
    assert!(st.status.success(), "{}", text(&st));
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["healthy"], true, "{v}");
    let d = natctl(&emu, &["doctor", "--vpc", &w.vpc, "--output", "json"]);
    let dv: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap();
    let checks: Vec<&str> = dv["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] != "advice")
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    assert!(
        checks.is_empty(),
        "no break or risk on a regional stack: {dv}"
    );

    // regional -> zonal: gateways per AZ available and routed before the regional one
    // goes; the shared table is split per AZ.
    let zonal = [
        "setup",
        "--env",
        "prod",
        "--gateway",
        "zonal",
        "--vpc",
        &w.vpc,
        "--name",
        "rg",
        "--drain-seconds",
        "1",
    ];
    let regional_ids = ids(&g);
    let (out, samples) = switch(&emu, &w, &zonal).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("retire"), "{}", text(&out));
    let z = gateways(&emu, "rg");
    assert_eq!(z.len(), 2, "{z:?}");
    assert!(
        z.iter()
            .all(|g| g.1 == "zonal" && g.2.is_some() && g.3 == "available")
    );
    assert_eq!(addresses(&emu, "rg"), 2);
    assert_never_without_default_route(&samples, &regional_ids, &ids(&z));

    // zonal -> regional: the zonal gateways and their addresses go, the split tables
    // now route to the regional gateway.
    let (out, samples) = switch(&emu, &w, &regional).await;
    assert!(out.status.success(), "{}", text(&out));
    let r = gateways(&emu, "rg");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].1, "regional");
    assert_eq!(
        addresses(&emu, "rg"),
        0,
        "the zonal gateways' addresses released"
    );
    assert_never_without_default_route(&samples, &ids(&z), &ids(&r));
    let again = natctl(&emu, &regional);
    assert_eq!(
        stdout(&again).trim(),
        "No changes necessary.",
        "{}",
        text(&again)
    );

    // Teardown: the VPC as it was.
    let out = natctl(&emu, &["teardown", "--name", "rg"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(gateways(&emu, "rg").is_empty());
    assert_eq!(snapshot(&emu, &w.vpc), before_setup);
}

#[tokio::test]
async fn regional_needs_no_public_subnet_but_an_internet_gateway_and_is_for_prod_only() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    // Dev takes no --gateway: refused before any change.
    let before = emu.calls().len();
    let out = natctl(
        &emu,
        &[
            "setup",
            "--env",
            "dev",
            "--gateway",
            "regional",
            "--vpc",
            &w.vpc,
            "--ami",
            "ami-x",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--gateway regional"), "{}", text(&out));
    assert!(!emu.calls()[before..].iter().any(|c| is_mutating(c)));

    // Only AZ a has a public subnet: zonal is refused for AZ b, regional is not.
    let zonal = natctl(
        &emu,
        &["plan", "--env", "prod", "--vpc", &w.vpc, "--name", "np"],
    );
    assert_eq!(zonal.status.code(), Some(2), "{}", text(&zonal));
    let plan = natctl(
        &emu,
        &[
            "plan",
            "--env",
            "prod",
            "--gateway",
            "regional",
            "--vpc",
            &w.vpc,
            "--name",
            "np",
        ],
    );
    assert!(plan.status.success(), "{}", text(&plan));

    // Without an attached internet gateway a regional gateway cannot reach the
    // internet (AWS fails it with Gateway.NotAttached): refused, naming the VPC.
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
    for g in igws.internet_gateways() {
        ec2.detach_internet_gateway()
            .internet_gateway_id(g.internet_gateway_id().unwrap())
            .vpc_id(&w.vpc)
            .send()
            .await
            .unwrap();
    }
    let before = emu.calls().len();
    let out = natctl(
        &emu,
        &[
            "setup",
            "--env",
            "prod",
            "--gateway",
            "regional",
            "--vpc",
            &w.vpc,
            "--name",
            "np",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&w.vpc) && text(&out).contains("internet gateway"),
        "{}",
        text(&out)
    );
    assert!(!emu.calls()[before..].iter().any(|c| is_mutating(c)));
}
