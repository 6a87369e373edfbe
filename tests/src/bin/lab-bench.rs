//! The lab benchmark (run as root: `cargo run -p natd-tests --bin lab-bench`):
//!
//! 1. Failover: in the lab, `natctl setup --env dev`, then the NAT instance is
//!    terminated `NATD_BENCH_KILLS` times (default 6); each gap from the kill to the
//!    first successful request from the private namespace (probing every 100 ms with a
//!    100 ms connect timeout), split into detection (the instance leaves `running`),
//!    replacement start (the group's new instance runs), natd start to ready, and
//!    route switch to the first reply.
//! 2. Data plane: iperf3 throughput and TCP connections per second from the private
//!    namespace through natd's ruleset, against plain routing through the same NAT
//!    namespace without NAT (no rules, the internet given a route back).
//! 3. Conntrack capacity: with `nf_conntrack_max` set to `NATD_BENCH_CONNTRACK` (default
//!    512; the setting is machine-wide, and restored afterwards), how many concurrent
//!    connections the NAT namespace holds before new ones are refused.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::dataplane::{DataPlane, SERVER, fetch};
use natd_tests::emulator::Emulator;
use natd_tests::lab::{Event, Lab};
use natd_tests::netns::Netns;
use natd_tests::world::{IMAGE, World, text};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn probe(ns: &Netns) -> bool {
    let addr: SocketAddr = natd_tests::lab::SERVER.parse().unwrap();
    ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok())
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn stats(name: &str, v: &mut [u128]) {
    v.sort_unstable();
    println!(
        "| {name} | {} | {} | {} |",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1]
    );
}

async fn failover(kills: usize) {
    let lab = Lab::new(Arc::new(Emulator::start())).await;
    let out = natd_tests::cli::natctl(
        &lab.emu,
        &[
            "setup",
            "--env",
            "dev",
            "--vpc",
            &lab.world.vpc,
            "--name",
            "bench",
            "--ami",
            IMAGE,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let subnet = lab.world.private_subnets[0].clone();
    let private = Netns::named(&lab.private[0].1.name);
    let wait_hop = |not: Option<String>| {
        let lab = &lab;
        let subnet = subnet.clone();
        let private = Netns::named(&private.name);
        async move {
            let start = Instant::now();
            loop {
                let hop = lab.routes().get(&subnet).cloned().unwrap_or_default();
                if hop.starts_with("i-") && Some(&hop) != not.as_ref() && probe(&private) {
                    return (hop, Instant::now());
                }
                assert!(start.elapsed() < Duration::from_secs(120), "no egress");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let (mut current, _) = wait_hop(None).await;
    let (mut detect, mut replace, mut ready, mut switch, mut total) =
        (vec![], vec![], vec![], vec![], vec![]);
    for n in 0..kills {
        lab.world
            .ec2
            .terminate_instances()
            .instance_ids(&current)
            .send()
            .await
            .unwrap();
        let killed = Instant::now();
        let (next, restored) = wait_hop(Some(current.clone())).await;
        // The lab notices natd's "forwarding ready" log line on its next tick.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lab
            .events()
            .iter()
            .any(|(_, e)| *e == Event::Ready(next.clone()))
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let events = lab.events();
        let at = |e: &Event| {
            events
                .iter()
                .find(|(t, x)| *t >= killed && x == e)
                .map(|(t, _)| *t)
                .unwrap_or_else(|| panic!("no {e:?} after the kill: {events:?}"))
        };
        let gone = at(&Event::Gone(current.clone()));
        let booted = at(&Event::Booted(next.clone()));
        let up = at(&Event::Ready(next.clone())).max(booted);
        detect.push(ms(gone.saturating_duration_since(killed)));
        replace.push(ms(booted.saturating_duration_since(gone)));
        ready.push(ms(up.saturating_duration_since(booted)));
        switch.push(ms(restored.saturating_duration_since(up)));
        total.push(ms(restored - killed));
        eprintln!(
            "kill {}: {current} -> {next}, gap {} ms",
            n + 1,
            ms(restored - killed)
        );
        current = next;
    }
    println!("\nFailover ({kills} kills), ms\n");
    println!("| phase | median | min | max |");
    println!("|---|---|---|---|");
    stats("detection (kill to instance gone)", &mut detect);
    stats(
        "replacement start (gone to new instance running)",
        &mut replace,
    );
    stats("natd start to forwarding ready", &mut ready);
    stats("route switch to first reply", &mut switch);
    stats("egress gap, total", &mut total);
}

/// iperf3 from `client` to the server in `server` for 5 s: bits per second received.
fn iperf(client: &Netns, server: &Netns) -> f64 {
    let mut s = server
        .command(std::path::Path::new("iperf3"))
        .args(["-s", "-1", "-B", "198.51.100.1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = client
        .command(std::path::Path::new("iperf3"))
        .args(["-c", "198.51.100.1", "-t", "5", "-J"])
        .output()
        .unwrap();
    let _ = s.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
}

/// Completed connections (connect, read the answer, close) per second for 3 s.
fn connections_per_second(client: &Netns) -> f64 {
    let name = client.name.clone();
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(3) {
        if fetch(&Netns::named(&name), SERVER).is_ok() {
            n += 1;
        }
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

/// Restores nf_conntrack_max when dropped.
struct ConntrackMax(String);

impl Drop for ConntrackMax {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/net/netfilter/nf_conntrack_max", &self.0);
    }
}

async fn dataplane(conntrack: u32) {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let nat = w.instance("bench").await;
    w.route_table(Some("bench")).await;
    let dp = DataPlane::new(&emu, &w, &nat).await;
    // Plain routing: forwarding on, no rules, the internet routes back to the VPC.
    dp.host.ns.sh("sysctl -qw net.ipv4.ip_forward=1");
    dp.internet.sh("ip route add 10.20.0.0/16 via 198.51.100.2");
    assert!(fetch(&dp.private, SERVER).is_ok());
    let plain_bps = iperf(&dp.private, &dp.internet);
    let plain_cps = connections_per_second(&dp.private);
    // natd's ruleset, and no route back: only masquerading makes replies arrive.
    let out = dp.host.once(&dp.host.config("bench", ""));
    assert!(out.status.success(), "{}", text(&out));
    dp.internet.sh("ip route del 10.20.0.0/16");
    assert_eq!(fetch(&dp.private, SERVER).unwrap(), "198.51.100.2");
    // First, while natd's conntrack table is nearly empty.
    conntrack_capacity(&dp, conntrack);
    let natd_bps = iperf(&dp.private, &dp.internet);
    let natd_cps = connections_per_second(&dp.private);
    println!("\nData plane (private -> NAT namespace -> internet, veth, one host)\n");
    println!("| path | iperf3 throughput | connections/s |");
    println!("|---|---|---|");
    println!(
        "| plain routing, no NAT | {:.2} Gbit/s | {plain_cps:.0} |",
        plain_bps / 1e9
    );
    println!(
        "| natd's ruleset (MASQUERADE, FORWARD filter) | {:.2} Gbit/s | {natd_cps:.0} |",
        natd_bps / 1e9
    );
    println!(
        "| ratio natd / plain | {:.3} | {:.3} |",
        natd_bps / plain_bps,
        natd_cps / plain_cps
    );
}

/// How many concurrent connections from `dp.private` the NAT namespace holds with
/// nf_conntrack_max = `conntrack`; prints the table.
fn conntrack_capacity(dp: &DataPlane, conntrack: u32) {
    let path = "/proc/sys/net/netfilter/nf_conntrack_max";
    let _restore = ConntrackMax(std::fs::read_to_string(path).unwrap().trim().to_string());
    std::fs::write(path, conntrack.to_string()).unwrap();
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let hold: SocketAddr = "198.51.100.1:9090".parse().unwrap();
    let listener = dp.internet.run(move || TcpListener::bind(hold).unwrap());
    let server = std::thread::spawn(move || {
        let mut held = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            match listener.accept() {
                Ok((c, _)) => held.push(c),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
            if held.len() > 1_000_000 {
                break;
            }
        }
        held.len()
    });
    let max = u64::from(conntrack) * 2;
    let held = dp.private.run(move || {
        let mut conns = Vec::new();
        let mut refused_in_a_row = 0;
        while refused_in_a_row < 3 && (conns.len() as u64) < max {
            match TcpStream::connect_timeout(&hold, Duration::from_millis(300)) {
                Ok(c) => {
                    conns.push(c);
                    refused_in_a_row = 0;
                }
                Err(_) => refused_in_a_row += 1,
            }
        }
        let n = conns.len();
        drop(conns);
        n
    });
    let count = dp
        .host
        .ns
        .sh("cat /proc/sys/net/netfilter/nf_conntrack_count")
        .trim()
        .to_string();
    drop(server);
    println!("\nConntrack capacity (nf_conntrack_max = {conntrack})\n");
    println!("| concurrent connections held | conntrack entries in the NAT namespace |");
    println!("|---|---|");
    println!("| {held} | {count} |");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let kills = std::env::var("NATD_BENCH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let conntrack = std::env::var("NATD_BENCH_CONNTRACK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    failover(kills).await;
    dataplane(conntrack).await;
}
