//! A setup cut off at any of its mutating calls (the emulator carries out the first K
//! and refuses the rest, as if natctl had died after its K-th change) converges when run
//! again, with no duplicate and no lock left behind, for every K.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::cli::{natctl, stdout};
use natd_tests::emulator::{Emulator, is_mutating};
use natd_tests::world::{IMAGE, World, text};

/// A fresh emulator and VPC (`prod`: with a public subnet in each AZ), and the
/// arguments of the setup to run there.
async fn fresh(prod: bool, args: impl Fn(&World) -> Vec<String>) -> (Emulator, World, Vec<String>) {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    if prod {
        w.public_subnet_b().await;
    }
    let a = args(&w);
    (emu, w, a)
}

/// How many mutating calls `args` makes on a fresh VPC.
async fn mutating_calls(prod: bool, args: impl Fn(&World) -> Vec<String>) -> usize {
    let (emu, _w, a) = fresh(prod, args).await;
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let before = emu.calls().len();
    let out = natctl(&emu, &a);
    assert!(out.status.success(), "{}", text(&out));
    emu.calls()[before..]
        .iter()
        .filter(|c| is_mutating(c))
        .count()
}

/// Counts of what a stack must have exactly one of (or `per_az` of, for prod).
fn assert_no_duplicates(emu: &Emulator, vpc: &str, stack: &str, prod: bool, k: usize) {
    let nat = format!("natd-{stack}");
    let count = |v: serde_json::Value, key: &str| v[key].as_array().unwrap().len();
    let lts = emu.aws(&["ec2", "describe-launch-templates"]);
    let names: Vec<&str> = lts["LaunchTemplates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["LaunchTemplateName"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&format!("{nat}-lock").as_str()),
        "k={k}: lock left: {names:?}"
    );
    let filter = format!("Name=tag:natd:stack,Values={stack}");
    if prod {
        let gws = emu.aws(&["ec2", "describe-nat-gateways", "--filter", &filter]);
        let live = gws["NatGateways"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["State"] != "deleted" && g["State"] != "deleting")
            .count();
        assert_eq!(live, 2, "k={k}: one gateway per AZ: {gws}");
        let eips = emu.aws(&["ec2", "describe-addresses", "--filters", &filter]);
        assert_eq!(count(eips, "Addresses"), 2, "k={k}: one address per AZ");
    } else {
        assert_eq!(
            names.iter().filter(|n| **n == nat).count(),
            1,
            "k={k}: {names:?}"
        );
        let sg = format!("Name=group-name,Values={nat}");
        let sgs = emu.aws(&[
            "ec2",
            "describe-security-groups",
            "--filters",
            &sg,
            &format!("Name=vpc-id,Values={vpc}"),
        ]);
        assert_eq!(count(sgs, "SecurityGroups"), 1, "k={k}");
        let groups = emu.aws(&["autoscaling", "describe-auto-scaling-groups"]);
        assert_eq!(count(groups, "AutoScalingGroups"), 1, "k={k}");
        let roles = emu.aws(&["iam", "list-roles"]);
        let n = roles["Roles"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["RoleName"] == nat.as_str())
            .count();
        assert_eq!(n, 1, "k={k}");
    }
}

/// Cuts run at once: each has an emulator of its own, and most of a cut's time is
/// natctl waiting (IAM propagation, the dead run's lock settling).
const CONCURRENT_CUTS: usize = 3;

/// Setup cut off after its `k`-th mutating call, run again, and once more.
async fn cut_at(k: usize, prod: bool, args: impl Fn(&World) -> Vec<String>) {
    let (emu, w, a) = fresh(prod, args).await;
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    emu.cut_after(Some(k));
    // A run may need fewer calls than the measured one (fewer retries while IAM
    // propagates): then a late cut leaves it whole, which is fine too.
    let _cut = natctl(&emu, &a);
    emu.cut_after(None);
    let out = natctl(&emu, &a);
    assert!(out.status.success(), "k={k}: {}", text(&out));
    let again = natctl(&emu, &a);
    assert_eq!(
        stdout(&again).trim(),
        "No changes necessary.",
        "k={k}: {}",
        text(&again)
    );
    assert_no_duplicates(&emu, &w.vpc, "cut", prod, k);
}

async fn cut_at_every_mutating_call(
    prod: bool,
    args: impl Fn(&World) -> Vec<String> + Copy + Sync,
) {
    let total = mutating_calls(prod, args).await;
    assert!(total > 5, "a fresh setup makes changes: {total}");
    // Every K, [`CONCURRENT_CUTS`] at a time (a panic in one fails the test).
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..CONCURRENT_CUTS {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if k >= total {
                        break;
                    }
                    rt.block_on(cut_at(k, prod, args));
                }
            });
        }
    });
}

#[tokio::test]
async fn dev_setup_cut_off_at_any_mutating_call_converges() {
    cut_at_every_mutating_call(false, |w| {
        [
            "setup", "--env", "dev", "--vpc", &w.vpc, "--name", "cut", "--ami", IMAGE,
        ]
        .map(String::from)
        .to_vec()
    })
    .await;
}

#[tokio::test]
async fn prod_setup_cut_off_at_any_mutating_call_converges() {
    cut_at_every_mutating_call(true, |w| {
        ["setup", "--env", "prod", "--vpc", &w.vpc, "--name", "cut"]
            .map(String::from)
            .to_vec()
    })
    .await;
}
