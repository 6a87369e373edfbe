//! The local lab demo: a VPC in the AWS emulator, a NAT instance as a network
//! namespace running the real natd, a private namespace behind it and an internet
//! namespace with a server (`natd_tests::dataplane`). Shows natd taking over,
//! forwarding, and healing drift.
//!
//! Run as root: `tests/demo` (installs what it needs first). Leaves nothing behind,
//! also when interrupted with Ctrl-C.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::dataplane::{DataPlane, SERVER, fetch};
use natd_tests::emulator::Emulator;
use natd_tests::world::World;
use std::io::Write;
use std::time::{Duration, Instant};

fn say(s: &str) {
    println!("{s}");
}

async fn wait_for(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
    context: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    print!("   waiting for {what} ");
    let _ = std::io::stdout().flush();
    let mut dots = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "gave up waiting for {what} after {limit:?}\n{}",
            context()
        );
        if dots.elapsed() > Duration::from_millis(500) {
            print!(".");
            let _ = std::io::stdout().flush();
            dots = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = start.elapsed();
    println!(" {:.1} s", took.as_secs_f64());
    took
}

async fn story() -> Vec<(String, String)> {
    let mut summary = Vec::new();
    say("1. The AWS side, in the emulator");
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let (group, nat) = w.nat_group("demo", true).await;
    let rtb = w.route_table(Some("demo")).await;
    say(&format!(
        "   VPC {} 10.20.0.0/16, private route table {rtb} tagged natd:egress=demo",
        w.vpc
    ));
    say(&format!(
        "   Auto Scaling group {group} launched {nat}; its launch hook holds it in Pending:Wait"
    ));

    say("2. The network, in namespaces");
    let dp = DataPlane::new(&emu, &w, &nat).await;
    say(
        "   private 10.20.1.10 -> [NAT instance: natd] ens5 198.51.100.2 -> internet server 198.51.100.1",
    );
    let before = fetch(&dp.private, SERVER).err().unwrap_or_default();
    say(&format!("   before natd, private -> internet: {before}"));

    say("3. natd starts on the NAT instance");
    let natd = dp.host.spawn(&dp.host.config("demo", ""));
    let ready = wait_for(
        "forwarding ready",
        Duration::from_secs(60),
        || natd.log().contains("forwarding ready"),
        || natd.log(),
    )
    .await;
    for line in natd.log().lines() {
        say(&format!("   natd | {}", line.trim()));
    }
    say(
        "   (nf_conntrack_max is read-only inside a network namespace; on an instance natd sets it)",
    );
    summary.push((
        "natd start to forwarding ready".into(),
        format!("{:.2} s", ready.as_secs_f64()),
    ));
    let route = w.default_route(&rtb).await.unwrap();
    say(&format!(
        "   route table {rtb}: 0.0.0.0/0 -> {} ({})",
        route.0, route.1
    ));
    let state = w.group_instances(&group).await[0].1.clone();
    say(&format!("   {nat} lifecycle state: {state}"));
    summary.push(("default route".into(), route.0));
    let check = if w.source_dest_check(&dp.host.eni).await {
        "on"
    } else {
        "off"
    };
    summary.push(("source/dest check".into(), check.into()));
    summary.push(("lifecycle".into(), state));

    say("4. Traffic");
    let reply = fetch(&dp.private, SERVER).unwrap_or_else(|e| format!("FAILED: {e}"));
    say(&format!(
        "   private -> internet: the server sees the client as {reply} (the NAT's public address)"
    ));
    summary.push(("egress from private, seen as".into(), reply));

    say("5. Someone flushes natd's NAT chain and turns forwarding off");
    dp.host
        .ns
        .sh("iptables -t nat -F NATD-POSTROUTING && sysctl -qw net.ipv4.ip_forward=0");
    say(&format!(
        "   private -> internet: {}",
        fetch(&dp.private, SERVER).err().unwrap_or_default()
    ));
    let healed = wait_for(
        "natd to repair it",
        Duration::from_secs(30),
        || fetch(&dp.private, SERVER).is_ok(),
        || natd.log(),
    )
    .await;
    for line in natd.log().lines().filter(|l| l.contains("drift")) {
        say(&format!("   natd | {}", line.trim()));
    }
    say(&format!(
        "   private -> internet: seen as {}",
        fetch(&dp.private, SERVER).unwrap_or_default()
    ));
    summary.push((
        "drift repaired within".into(),
        format!("{:.2} s", healed.as_secs_f64()),
    ));

    say("6. Tearing down: natd, the namespaces and the emulator go");
    drop(natd);
    drop(dp);
    summary
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let summary = tokio::select! {
        s = story() => s,
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted: cleaning up");
            return;
        }
    };
    println!("\nSummary");
    let width = summary.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in summary {
        println!("  {k:width$}  {v}");
    }
}
