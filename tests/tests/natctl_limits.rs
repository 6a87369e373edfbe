//! natctl checks AWS's limits before its first change: a pair's instance type against
//! the addresses each member's interface must hold, the Elastic IPs the plan allocates
//! against the region's quota. Run against the emulator, which enforces both as AWS does.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::cli::{natctl, stdout};
use natd_tests::emulator::{Emulator, is_mutating};
use natd_tests::world::{IMAGE, World, text};

fn mutating(emu: &Emulator) -> Vec<String> {
    emu.calls().into_iter().filter(|c| is_mutating(c)).collect()
}

#[tokio::test]
async fn a_pair_runs_on_a_type_that_holds_its_egress_addresses() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let pair = |extra: &[&str]| {
        let mut a = vec![
            "plan", "--env", "dev", "--ha", "--vpc", &w.vpc, "--ami", IMAGE, "--name", "p",
        ];
        a.extend_from_slice(extra);
        natctl(&emu, &a)
    };
    // One egress address: the default t4g.micro holds 2 (its own and one).
    let one = pair(&[]);
    assert!(one.status.success(), "{}", text(&one));
    assert!(
        stdout(&one).contains("each member runs on t4g.micro, which holds 2 IPv4 addresses"),
        "{}",
        stdout(&one)
    );
    // Two: 3 addresses per member, so the smallest t4g type with 4.
    let two = pair(&["--egress-ips", "2"]);
    assert!(two.status.success(), "{}", text(&two));
    assert!(
        stdout(&two).contains("each member runs on t4g.small, which holds 4 IPv4 addresses"),
        "{}",
        stdout(&two)
    );
    assert!(stdout(&two).contains("t4g.small"), "{}", stdout(&two));
    // Five: 6, a t4g.medium.
    let five = pair(&["--egress-ips", "5"]);
    assert!(
        stdout(&five).contains("each member runs on t4g.medium"),
        "{}",
        stdout(&five)
    );
    // A named type that cannot: refused, naming it, its limit and what fits.
    let before = mutating(&emu).len();
    for args in [
        vec![
            "plan",
            "--env",
            "dev",
            "--ha",
            "--vpc",
            &w.vpc,
            "--ami",
            IMAGE,
            "--name",
            "p",
            "--egress-ips",
            "2",
            "--instance-type",
            "t4g.micro",
        ],
        vec![
            "setup",
            "--env",
            "dev",
            "--ha",
            "--vpc",
            &w.vpc,
            "--ami",
            IMAGE,
            "--name",
            "p",
            "--egress-ips",
            "2",
            "--instance-type",
            "t4g.micro",
        ],
    ] {
        let out = natctl(&emu, &args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        for part in [
            "t4g.micro allows 2 IPv4 addresses",
            "needs 3",
            "--instance-type t4g.small",
        ] {
            assert!(text(&out).contains(part), "{part}: {}", text(&out));
        }
    }
    assert_eq!(
        mutating(&emu).len(),
        before,
        "nothing created: {:?}",
        mutating(&emu)
    );
    // Built on the chosen type, the launch template says it.
    let built = natctl(
        &emu,
        &[
            "setup",
            "--env",
            "dev",
            "--ha",
            "--vpc",
            &w.vpc,
            "--ami",
            IMAGE,
            "--name",
            "p",
            "--egress-ips",
            "2",
        ],
    );
    assert!(built.status.success(), "{}", text(&built));
    let lt = emu.aws(&[
        "ec2",
        "describe-launch-template-versions",
        "--launch-template-name",
        "natd-p",
        "--versions",
        "$Default",
    ]);
    assert_eq!(
        lt["LaunchTemplateVersions"][0]["LaunchTemplateData"]["InstanceType"],
        "t4g.small"
    );
    // And re-running without the flags changes nothing.
    let again = natctl(
        &emu,
        &[
            "setup", "--env", "dev", "--ha", "--vpc", &w.vpc, "--ami", IMAGE, "--name", "p",
        ],
    );
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        stdout(&again).contains("No changes necessary"),
        "{}",
        stdout(&again)
    );
}

#[tokio::test]
async fn an_elastic_ip_quota_too_small_for_the_plan_is_refused_before_anything_is_created() {
    let emu = Emulator::start_env(None, &[("NATD_EMU_MAX_EIPS", "2")]);
    let w = World::new(&emu.sdk()).await;
    // The account already holds one address of its two.
    emu.aws(&["ec2", "allocate-address", "--domain", "vpc"]);
    let before = mutating(&emu).len();
    let out = natctl(
        &emu,
        &[
            "setup",
            "--env",
            "dev",
            "--ha",
            "--vpc",
            &w.vpc,
            "--ami",
            IMAGE,
            "--name",
            "q",
            "--egress-ips",
            "2",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    for part in [
        "2 new Elastic IP",
        "holds 1 of its quota of 2",
        "vpc-max-elastic-ips",
        "L-0263D0A3",
        "--desired-value 3",
    ] {
        assert!(text(&out).contains(part), "{part}: {}", text(&out));
    }
    assert_eq!(
        mutating(&emu).len(),
        before,
        "nothing created: {:?}",
        mutating(&emu)
    );
    // One address fits: built.
    let ok = natctl(
        &emu,
        &[
            "setup", "--env", "dev", "--ha", "--vpc", &w.vpc, "--ami", IMAGE, "--name", "q",
        ],
    );
    assert!(ok.status.success(), "{}", text(&ok));
    // Switching it to prod needs one per AZ (two more, before the pair's goes): the
    // account now holds 2 of 2.
    w.public_subnet_b().await;
    let prod = natctl(
        &emu,
        &["plan", "--env", "prod", "--vpc", &w.vpc, "--name", "q"],
    );
    assert_eq!(prod.status.code(), Some(2), "{}", text(&prod));
    assert!(text(&prod).contains("quota of 2"), "{}", text(&prod));
}
