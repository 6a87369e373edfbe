//! The local lab demo: a VPC in the AWS emulator, a NAT instance as a network
//! namespace running the real natd, a private namespace behind it and an internet
//! namespace with a server. Shows natd taking over, forwarding, and healing drift.
//!
//! Run as root: `tests/demo` (installs what it needs first). Leaves nothing behind,
//! also when interrupted with Ctrl-C.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::emulator::Emulator;
use natd_tests::netns::Netns;
use natd_tests::world::{NatHost, World};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const SERVER: &str = "198.51.100.1:80";

fn say(s: &str) {
    println!("{s}");
}

fn fetch(ns: &Netns) -> Result<String, String> {
    let addr: SocketAddr = SERVER.parse().unwrap();
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
}

async fn wait_for(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> bool,
    context: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    print!("  waiting for {what} ");
    let _ = std::io::stdout().flush();
    let mut dots = Instant::now();
    while !f() {
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
    let host = NatHost::new(&emu, &w, &nat).await;
    let private = Netns::new("priv");
    let internet = Netns::new("inet");
    private.link("p0", "10.20.1.10/24", &host.ns, "in0", "10.20.1.1/24");
    private.sh("ip route add default via 10.20.1.1");
    host.ns.link(
        "ens5",
        "198.51.100.2/24",
        &internet,
        "i0",
        "198.51.100.1/24",
    );
    host.ns
        .sh(&format!("ip link set ens5 address {}", host.mac));
    let addr: SocketAddr = SERVER.parse().unwrap();
    let listener = internet.run(move || TcpListener::bind(addr).unwrap());
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let peer = c
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = c.write_all(format!("hello {peer}").as_bytes());
        }
    });
    say(
        "   private 10.20.1.10 -> [NAT instance: natd] ens5 198.51.100.2 -> internet server 198.51.100.1",
    );
    say(&format!(
        "   before natd, private -> internet: {}",
        fetch(&private).err().unwrap_or_default()
    ));

    say("3. natd starts on the NAT instance");
    let natd = host.spawn(&host.config("demo", ""));
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
    summary.push((
        "natd start to forwarding ready".into(),
        format!("{:.2} s", ready.as_secs_f64()),
    ));
    let route = w.default_route(&rtb).await.unwrap();
    say(&format!(
        "   route table {rtb}: 0.0.0.0/0 -> {} ({})",
        route.0, route.1
    ));
    let state = &w.group_instances(&group).await[0].1;
    say(&format!("   {nat} lifecycle state: {state}"));
    summary.push(("default route".into(), route.0));
    summary.push((
        "source/dest check".into(),
        if w.source_dest_check(&host.eni).await {
            "on"
        } else {
            "off"
        }
        .into(),
    ));
    summary.push(("lifecycle".into(), state.clone()));

    say("4. Traffic");
    let reply = fetch(&private).unwrap_or_else(|e| format!("FAILED: {e}"));
    say(&format!(
        "   private -> internet: server says {reply:?} (the NAT's public address)"
    ));
    summary.push(("egress from private".into(), reply));

    say("5. Someone flushes natd's NAT chain and turns forwarding off");
    host.ns
        .sh("iptables -t nat -F NATD-POSTROUTING && sysctl -qw net.ipv4.ip_forward=0");
    say(&format!(
        "   private -> internet: {}",
        fetch(&private).err().unwrap_or_default()
    ));
    let healed = wait_for(
        "natd to repair it",
        Duration::from_secs(30),
        || fetch(&private).is_ok(),
        || natd.log(),
    )
    .await;
    say(&format!(
        "   private -> internet: server says {:?}",
        fetch(&private).unwrap_or_default()
    ));
    summary.push((
        "drift repaired within".into(),
        format!("{:.2} s", healed.as_secs_f64()),
    ));

    say("6. Tearing down: natd stops (routes and rules stay), namespaces and emulator go");
    drop(natd);
    drop(host);
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
