//! natctl benchmark: wall time and AWS calls of `setup --env dev`, `setup --env prod`,
//! `setup --env dev --lambda` (each on a fresh VPC with two AZs) and a no-op re-run,
//! against the emulator with its AWS delays on (NAT gateways pending, IAM propagation,
//! Lambda update states, Lambda ENIs released late; `NATD_EMU_*`, see
//! `tests/emulator/moto_natd.py`).
//!
//! Run: `cargo run -p natd-tests --bin natctl-bench` (`NATCTL_BIN` to measure a given
//! binary, else the workspace's debug build). Calls are counted by the emulator's call
//! log, so they include every read; "mutating" is everything but Describe*/Get*/List*.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::cli::command;
use natd_tests::emulator::{Emulator, is_mutating};
use natd_tests::world::{IMAGE, World};
use std::time::{Duration, Instant};

const RUNS: usize = 5;

struct Sample {
    wall: Duration,
    calls: usize,
    mutating: usize,
}

fn run(emu: &Emulator, args: &[&str]) -> Sample {
    let before = emu.calls().len();
    let mut cmd = command(emu, args);
    if let Some(bin) = std::env::var_os("NATCTL_BIN") {
        let mut c = std::process::Command::new(bin);
        c.args(cmd.get_args()).envs(
            cmd.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        );
        cmd = c;
    }
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let wall = start.elapsed();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = emu.calls();
    let new = &calls[before..];
    Sample {
        wall,
        calls: new.len(),
        mutating: new.iter().filter(|c| is_mutating(c)).count(),
    }
}

fn report(name: &str, samples: &mut [Sample]) {
    samples.sort_by_key(|s| s.wall);
    let med = &samples[samples.len() / 2];
    let calls: Vec<usize> = samples.iter().map(|s| s.calls).collect();
    let mutating: Vec<usize> = samples.iter().map(|s| s.mutating).collect();
    println!(
        "| {name} | median {} ms (min {}, max {}) | {} | {} |",
        med.wall.as_millis(),
        samples[0].wall.as_millis(),
        samples[samples.len() - 1].wall.as_millis(),
        span(&calls),
        span(&mutating)
    );
}

fn span(v: &[usize]) -> String {
    let (lo, hi) = (v.iter().min().unwrap(), v.iter().max().unwrap());
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

/// A function `name` (with its own role, outside any VPC) and a secret `name/db`, made
/// with the AWS CLI as a user's account would have them.
fn application(emu: &Emulator, name: &str) {
    let role = format!("{name}-original");
    natd_tests::app::lambda_role(emu, &role, None);
    natd_tests::app::function(emu, name, &role, None);
    emu.aws(&[
        "secretsmanager",
        "create-secret",
        "--name",
        &format!("{name}/db"),
        "--secret-string",
        "{}",
    ]);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let emu = Emulator::start();
    let (mut dev, mut dev_noop, mut prod, mut prod_noop) = (vec![], vec![], vec![], vec![]);
    let (mut lam, mut lam_noop) = (vec![], vec![]);
    // A first call warms the emulator's EC2 catalogue, which every later run shares.
    let _ = World::new(&emu.sdk()).await;
    for i in 0..RUNS {
        let w = World::new(&emu.sdk()).await;
        w.public_subnet_b().await;
        let name = format!("bench-dev-{i}");
        let args = [
            "setup", "--env", "dev", "--vpc", &w.vpc, "--name", &name, "--ami", IMAGE,
        ];
        dev.push(run(&emu, &args));
        dev_noop.push(run(&emu, &args));
        let w = World::new(&emu.sdk()).await;
        w.public_subnet_b().await;
        let name = format!("bench-prod-{i}");
        let args = ["setup", "--env", "prod", "--vpc", &w.vpc, "--name", &name];
        prod.push(run(&emu, &args));
        prod_noop.push(run(&emu, &args));
        let w = World::new(&emu.sdk()).await;
        let name = format!("bench-fn-{i}");
        application(&emu, &name);
        let secret = format!("{name}/db");
        let args = [
            "setup",
            "--env",
            "dev",
            "--vpc",
            &w.vpc,
            "--name",
            &name,
            "--ami",
            IMAGE,
            "--lambda",
            &name,
            "--secret",
            &secret,
            "--db-port",
            "5432",
        ];
        lam.push(run(&emu, &args));
        lam_noop.push(run(&emu, &args));
        eprintln!("run {}/{RUNS} done", i + 1);
    }
    println!("| run ({RUNS} each) | wall time | AWS calls | mutating calls |");
    println!("|---|---|---|---|");
    report("setup --env dev, fresh VPC", &mut dev);
    report("setup --env dev, no-op re-run", &mut dev_noop);
    report("setup --env prod, fresh VPC (2 AZs)", &mut prod);
    report("setup --env prod, no-op re-run", &mut prod_noop);
    report(
        "setup --env dev --lambda --secret --db-port, fresh VPC",
        &mut lam,
    );
    report("setup --env dev --lambda ..., no-op re-run", &mut lam_noop);
}
