//! The lab benchmark (run as root: `cargo run -p natd-tests --bin lab-bench`):
//!
//! 1. Failover: in the lab, `natctl setup --env dev`, then the NAT instance is
//!    terminated `NATD_BENCH_KILLS` times (default 6), with instances booting
//!    `NATD_BENCH_BOOT_DELAY_SECS` (default 25) after they run; each gap from the kill to the
//!    first successful request from the private namespace (probing every 100 ms with a
//!    100 ms connect timeout), split into detection (the instance leaves `running`),
//!    replacement start (the group's new instance runs), natd start to ready, and
//!    route switch to the first reply.
//! 2. Data plane (`NATD_BENCH_ONLY=dataplane` runs only this): four ways through a NAT
//!    namespace, each in its own namespaces, measured interleaved round by round
//!    (`NATD_BENCH_ROUNDS`, default 5): plain routing (no netfilter), with conntrack,
//!    with conntrack and MASQUERADE, natd's ruleset. Per round: iperf3 with 1 and 4 streams (client
//!    pinned to CPU 0, server to CPU 1) and its CPU per GB, and TCP connections per
//!    second from one pinned thread that stays in the private namespace, with its CPU
//!    per connection. CPU is exact run time (getrusage, ksoftirqd's schedstat), not
//!    /proc/stat ticks. Reported as medians with spread, ratios to plain routing taken
//!    per round, and the CPU each step (conntrack, NAT, natd's filter) adds per
//!    connection.
//! 3. Conntrack capacity: with `nf_conntrack_max` set to `NATD_BENCH_CONNTRACK` (default
//!    512; the setting is machine-wide, and restored afterwards), how many concurrent
//!    connections the NAT namespace holds before new ones are refused.
//! 5. The hot standby pair (`NATD_BENCH_ONLY=pair` runs only this and, side by side in
//!    the same run, the single-instance failover): `natctl setup --env dev --ha`, 60
//!    long-lived connections (30 per private subnet) to the internet's echo server,
//!    then `NATD_BENCH_PAIR_KILLS` times (default 10) the holder dies at once
//!    ([`Lab::crash`]: its namespace and interface gone; EC2 terminates it 5 s later, as
//!    its group would once it notices, and a replacement boots as the standby). Per kill:
//!    the egress gap (kill to the first new connection answered, probing every 50 ms),
//!    how many of the connections still send and receive, whether the server still
//!    sees the stack's Elastic IP, and how often each route table's default route
//!    changed (sampled every 50 ms for 3 s after egress is back).
//!    `NATD_BENCH_ONLY=pair-delays` runs this alone twice in one run, with AWS's
//!    delays off and then on (reads `NATD_EMU_STALE_SECS` late, the data plane
//!    following route changes and address moves `DATAPLANE_DELAY` after the API), with
//!    natd's own figures from its log: the decision to the moved address listed by
//!    IMDS, and to the first packet from the VPC forwarded (`NATD_BENCH_PAIR_KILLS`,
//!    default 5 here).
//!    `NATD_BENCH_ONLY=pair-faults` runs the failures other than a clean death, on the
//!    pair as natctl deploys it ([`Lab::as_deployed`]: no probe target, natd's own 5 s
//!    pass), `NATD_BENCH_PAIR_KILLS` times each (default 5), with 40 long-lived
//!    connections open: the holder alive and beating but without its default route
//!    (fault to the first new connection answered; the roles swap each time, a minute
//!    apart, as the hold-down requires), then natd restarted on the holder and the
//!    holder dying 3 s later (its replacement becomes the standby).
//! 6. Egress addresses (`NATD_BENCH_ONLY=ports` runs only this): a pair with
//!    `--egress-ips 1`, then in a fresh lab one with `--egress-ips 2`; each time
//!    `NATD_BENCH_FLOWS` (default 70,000: more than the 64,512 source ports one
//!    address has for one destination) concurrent TCP connections to one destination
//!    (the internet's 198.51.100.1:7001), opened from 4 hosts of a private subnet
//!    ([`natd_tests::flows`]: `lab-flows` processes on each side, as one process may
//!    hold only so many descriptors).
//!    Reported: how many are open at once, by the public address the server saw, and
//!    why the others failed.
//! 4. The function (`NATD_BENCH_ONLY=function` runs only this): after `natctl setup
//!    --env dev --lambda app --secret app/db --db-instance app-db`, the function's
//!    handler (`lab-function`) is started `NATD_BENCH_STARTS` times (default 10) in
//!    private-a; each start's cold path (process start to init done: the secret through
//!    the Secrets Manager endpoint, the database connection) and first invocation,
//!    against its warm invocations (20 per start: a query on the open connection and a
//!    request to the internet through natd), all in the same run.

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

/// `natctl setup --env dev` for the stack `bench` in the lab, with `extra` arguments.
fn setup_dev(lab: &Lab, extra: &[&str]) {
    let mut args = vec![
        "setup",
        "--env",
        "dev",
        "--vpc",
        &lab.world.vpc,
        "--name",
        "bench",
        "--ami",
        IMAGE,
    ];
    args.extend(extra);
    let out = natd_tests::cli::natctl(&lab.emu, &args);
    assert!(out.status.success(), "{}", text(&out));
}

async fn failover(kills: usize, boot_delay: Duration) {
    let lab = Lab::with_boot_delay(Arc::new(Emulator::for_lab()), boot_delay).await;
    setup_dev(&lab, &[]);
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
    println!(
        "\nFailover ({kills} kills, boot delay {} s as a t4g booting AL2023 minimal), ms\n",
        boot_delay.as_secs_f64()
    );
    println!("| phase | median | min | max |");
    println!("|---|---|---|---|");
    stats("detection (kill to instance gone)", &mut detect);
    stats(
        "replacement start and boot (gone to new instance booted)",
        &mut replace,
    );
    stats("natd start to forwarding ready", &mut ready);
    stats("route switch to first reply", &mut switch);
    stats("egress gap, total", &mut total);
}

/// One iperf3 run: throughput and the CPU it cost.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    /// Bits per second received.
    bps: f64,
    /// CPU seconds per GB received: client, server and ksoftirqd, exact (rusage and
    /// schedstat, nanoseconds), not /proc/stat ticks.
    cpu_per_gb: f64,
}

/// Nanoseconds every ksoftirqd thread has run (softirq work deferred out of the
/// sender's context; with CONFIG_IRQ_TIME_ACCOUNTING off, as here, the rest is charged
/// to the task that raised it).
fn ksoftirqd_ns() -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.starts_with("ksoftirqd/") {
            let stat = std::fs::read_to_string(e.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// CPU time of this process, all threads, in nanoseconds (getrusage: exact run time).
fn self_cpu_ns() -> u64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let ns = |t: nix::sys::time::TimeVal| {
        u64::try_from(t.tv_sec()).unwrap() * 1_000_000_000
            + u64::try_from(t.tv_usec()).unwrap() * 1_000
    };
    ns(u.user_time()) + ns(u.system_time())
}

/// iperf3 with `streams` parallel streams from `client` (pinned to CPU 0) to the
/// server in `server` (pinned to CPU 1), for `secs`.
fn iperf(client: &Netns, server: &Netns, streams: u32, secs: u32) -> Throughput {
    let taskset = std::path::Path::new("taskset");
    let mut s = server
        .command(taskset)
        .args(["-c", "1", "iperf3", "-s", "-1", "-B", "198.51.100.1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let soft = ksoftirqd_ns();
    let out = client
        .command(taskset)
        .args(["-c", "0", "iperf3", "-c", "198.51.100.1", "-J"])
        .args(["-t", &secs.to_string(), "-P", &streams.to_string()])
        .output()
        .unwrap();
    let soft = ksoftirqd_ns() - soft;
    let _ = s.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let received = &v["end"]["sum_received"];
    let bytes = received["bytes"].as_f64().unwrap();
    let seconds = received["seconds"].as_f64().unwrap();
    // iperf3's CPU figures are getrusage (user + system) over its wall time, per side.
    let cpu = &v["end"]["cpu_utilization_percent"];
    let task_secs = (cpu["host_total"].as_f64().unwrap() + cpu["remote_total"].as_f64().unwrap())
        / 100.0
        * seconds;
    let cpu_secs = task_secs + soft as f64 / 1e9;
    Throughput {
        bps: received["bits_per_second"].as_f64().unwrap(),
        cpu_per_gb: cpu_secs / (bytes / 1e9),
    }
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) {
    let mut one = nix::sched::CpuSet::new();
    one.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one).unwrap();
}

/// The connection benchmark's server: in `ns` at `addr`, on its own thread pinned to
/// CPU 1, answering each connection with a byte, then waiting for the client to end
/// it (the client resets it: neither side keeps TIME_WAIT, so tens of thousands of
/// connections from one address do not run into their own leftovers).
fn pinned_server(ns: &Netns, addr: SocketAddr) {
    let listener = ns.run(move || TcpListener::bind(addr).unwrap());
    std::thread::spawn(move || {
        pin(1);
        let mut buf = [0u8; 1];
        for mut c in listener.incoming().flatten() {
            let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
            if std::io::Write::write_all(&mut c, b"x").is_ok() {
                let _ = std::io::Read::read(&mut c, &mut buf);
            }
        }
    });
}

/// Completed connections (connect, read the answer, close) from one thread that stays
/// in `client` (pinned to CPU 0) for `secs`: connections per second, and CPU
/// microseconds per connection (this process, both ends, plus ksoftirqd).
fn connections(client: &Netns, addr: SocketAddr, secs: u64) -> (f64, f64) {
    let (soft, cpu) = (ksoftirqd_ns(), self_cpu_ns());
    let (n, elapsed) = client.run(move || {
        pin(0);
        let start = Instant::now();
        let mut n = 0u32;
        let mut buf = [0u8; 1];
        while start.elapsed() < Duration::from_secs(secs) {
            if let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                if std::io::Read::read(&mut c, &mut buf).is_ok_and(|r| r == 1) {
                    n += 1;
                }
                // Close with a reset: no TIME_WAIT on either side.
                let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
            }
        }
        (n, start.elapsed())
    });
    let used = (self_cpu_ns() - cpu + ksoftirqd_ns() - soft) as f64;
    (
        f64::from(n) / elapsed.as_secs_f64(),
        used / 1e3 / f64::from(n.max(1)),
    )
}

/// One way through the NAT namespace, as measured.
struct Variant {
    name: &'static str,
    dp: DataPlane,
}

/// Per variant, one entry per round: 1-stream and 4-stream throughput,
/// connections/s, CPU per connection.
#[derive(Debug, Default, Clone)]
struct Rounds {
    one: Vec<Throughput>,
    four: Vec<Throughput>,
    cps: Vec<f64>,
    us_per_conn: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `median (min-max)` of `v / scale`.
fn summary(v: &[f64], scale: f64, digits: usize) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{:.d$} ({:.d$}-{:.d$})",
        median(v) / scale,
        min / scale,
        max / scale,
        d = digits
    )
}

/// Four ways through a NAT namespace, each in its own set of namespaces, measured
/// interleaved round by round (A B C D, A B C D, ...) so that the load of the moment
/// falls on all of them alike: plain routing (no netfilter), conntrack only (one
/// FORWARD rule that loads it), conntrack and MASQUERADE, and natd's full ruleset.
/// The differences between neighbours say where a connection's extra cost goes.
async fn dataplane(rounds: usize) {
    let emu = Emulator::for_lab();
    let w = World::new(&emu.sdk()).await;
    w.route_table(Some("bench")).await;
    let conn_addr: SocketAddr = "198.51.100.1:8081".parse().unwrap();
    let mut variants = Vec::new();
    for (name, stack) in [
        ("plain routing, no netfilter", "bench-plain"),
        ("+ conntrack (one FORWARD rule)", "bench-ct"),
        ("+ MASQUERADE", "bench-masq"),
        ("natd's ruleset (MASQUERADE, FORWARD filter)", "bench"),
    ] {
        let nat = w.instance(stack).await;
        let dp = DataPlane::new(&emu, &w, &nat).await;
        dp.host.ns.sh("sysctl -qw net.ipv4.ip_forward=1");
        if stack == "bench" {
            let out = dp.host.once(&dp.host.config("bench", ""));
            assert!(out.status.success(), "{}", text(&out));
        } else {
            if stack != "bench-plain" {
                dp.host
                    .ns
                    .sh("iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP");
            }
            if stack == "bench-masq" {
                dp.host
                    .ns
                    .sh("iptables -t nat -A POSTROUTING -s 10.20.0.0/16 -o ens5 -j MASQUERADE");
            } else {
                // No NAT: the internet routes back to the VPC.
                dp.internet.sh("ip route add 10.20.0.0/16 via 198.51.100.2");
            }
        }
        let seen = fetch(&dp.private, SERVER).unwrap();
        let masquerades = matches!(stack, "bench" | "bench-masq");
        assert_eq!(
            seen == "198.51.100.2",
            masquerades,
            "{name}: server saw {seen}"
        );
        pinned_server(&dp.internet, conn_addr);
        variants.push(Variant { name, dp });
    }
    let mut results = vec![Rounds::default(); variants.len()];
    for round in 0..rounds {
        for (v, r) in variants.iter().zip(results.iter_mut()) {
            r.one.push(iperf(&v.dp.private, &v.dp.internet, 1, 3));
            r.four.push(iperf(&v.dp.private, &v.dp.internet, 4, 3));
            let (cps, us) = connections(&v.dp.private, conn_addr, 2);
            r.cps.push(cps);
            r.us_per_conn.push(us);
        }
        eprintln!("data plane: round {} of {rounds} done", round + 1);
    }
    println!(
        "\nData plane (private -> NAT namespace -> internet, veth, one host), {rounds} interleaved rounds; client pinned to CPU 0, server to CPU 1; median (min-max)\n"
    );
    println!(
        "| path | 1 stream Gbit/s | 4 streams Gbit/s | CPU s/GB (4 streams) | connections/s | CPU µs/connection |"
    );
    println!("|---|---|---|---|---|---|");
    for (v, r) in variants.iter().zip(&results) {
        let one: Vec<f64> = r.one.iter().map(|t| t.bps).collect();
        let four: Vec<f64> = r.four.iter().map(|t| t.bps).collect();
        let gb: Vec<f64> = r.four.iter().map(|t| t.cpu_per_gb).collect();
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            v.name,
            summary(&one, 1e9, 2),
            summary(&four, 1e9, 2),
            summary(&gb, 1.0, 3),
            summary(&r.cps, 1.0, 0),
            summary(&r.us_per_conn, 1.0, 1),
        );
    }
    // Ratios to plain routing, round by round (the same moment), then their median.
    println!("\nRatios to plain routing, per round, median (min-max)\n");
    println!("| path | 1 stream | 4 streams | CPU per GB | connections/s | CPU per connection |");
    println!("|---|---|---|---|---|---|");
    let base = &results[0];
    for (v, r) in variants.iter().zip(&results).skip(1) {
        let ratio = |f: &dyn Fn(&Rounds, usize) -> f64| -> Vec<f64> {
            (0..rounds).map(|i| f(r, i) / f(base, i)).collect()
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            v.name,
            summary(&ratio(&|x, i| x.one[i].bps), 1.0, 3),
            summary(&ratio(&|x, i| x.four[i].bps), 1.0, 3),
            summary(&ratio(&|x, i| x.four[i].cpu_per_gb), 1.0, 3),
            summary(&ratio(&|x, i| x.cps[i]), 1.0, 3),
            summary(&ratio(&|x, i| x.us_per_conn[i]), 1.0, 3),
        );
    }
    // Where a connection's extra CPU goes: each step's per-round difference.
    println!(
        "\nCPU per connection added by each step, µs, median (min-max) of per-round differences\n"
    );
    println!("| step | µs/connection |");
    println!("|---|---|");
    for (k, step) in ["conntrack", "NAT (MASQUERADE)", "natd's filter"]
        .iter()
        .enumerate()
    {
        let d: Vec<f64> = (0..rounds)
            .map(|i| results[k + 1].us_per_conn[i] - results[k].us_per_conn[i])
            .collect();
        println!("| {step} | {} |", summary(&d, 1.0, 1));
    }
    conntrack_capacity(&variants[3].dp, conntrack_max());
}

/// Restores nf_conntrack_max when dropped.
struct ConntrackMax(String);

impl Drop for ConntrackMax {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/net/netfilter/nf_conntrack_max", &self.0);
    }
}

fn conntrack_max() -> u32 {
    std::env::var("NATD_BENCH_CONNTRACK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

/// How many concurrent connections from `dp.private` the NAT namespace holds with
/// nf_conntrack_max = `conntrack`; prints the table.
fn conntrack_capacity(dp: &DataPlane, conntrack: u32) {
    // The throughput and connection rounds left entries behind: start empty.
    dp.host.ns.sh("conntrack -F 2>/dev/null || true");
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
    let rounds = std::env::var("NATD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let boot_delay = std::env::var("NATD_BENCH_BOOT_DELAY_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(25.0);
    let starts = std::env::var("NATD_BENCH_STARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let only = std::env::var("NATD_BENCH_ONLY").ok();
    if only.as_deref() == Some("pair-faults") {
        let runs = std::env::var("NATD_BENCH_PAIR_KILLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        pair_faults(runs).await;
        return;
    }
    if only.as_deref() == Some("pair-delays") {
        let pair_kills = std::env::var("NATD_BENCH_PAIR_KILLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        pair_failover_delays(pair_kills, Duration::from_secs_f64(boot_delay)).await;
        return;
    }
    if only.is_none() || only.as_deref() == Some("pair") {
        let pair_kills = std::env::var("NATD_BENCH_PAIR_KILLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        pair_failover(pair_kills, Duration::from_secs_f64(boot_delay)).await;
    }
    if only.is_none() || only.as_deref() == Some("pair") {
        failover(kills, Duration::from_secs_f64(boot_delay)).await;
    }
    if only.is_none() || only.as_deref() == Some("ports") {
        let flows = std::env::var("NATD_BENCH_FLOWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(70_000);
        for ips in [1, 2] {
            egress_ports(ips, flows).await;
        }
    }
    if only.is_none() || only.as_deref() == Some("function") {
        function(starts).await;
    }
    if only.is_none() || only.as_deref() == Some("dataplane") {
        dataplane(rounds).await;
    }
}

/// The function's cold start against its warm invocations, through the lab.
async fn function(starts: usize) {
    let lab = Lab::new(Arc::new(Emulator::for_lab())).await;
    natd_tests::app::application(&lab.emu, &lab.world);
    setup_dev(&lab, &natd_tests::app::WIRING);
    let db = lab.database("app-db", "app/db");
    let ns = &lab.private[0].1;
    // Egress through natd and the function's groups in place before measuring.
    let deadline = Instant::now() + Duration::from_secs(120);
    while lab
        .function(ns, "app/db", &db)
        .and_then(|mut f| f.invoke())
        .is_err()
    {
        assert!(Instant::now() < deadline, "the function never worked");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let us = |d: Duration| d.as_micros();
    let (mut init, mut secret, mut connect, mut first, mut warm) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..starts {
        let mut f = lab.function(ns, "app/db", &db).unwrap();
        init.push(us(f.init));
        secret.push(us(f.secret));
        connect.push(us(f.connect));
        first.push(us(f.invoke().unwrap().took));
        for _ in 0..20 {
            warm.push(us(f.invoke().unwrap().took));
        }
    }
    let median = |v: &mut Vec<u128>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let (cold, hot) = (median(&mut init.clone()), median(&mut warm.clone()));
    println!(
        "\nThe function ({starts} starts, 20 warm invocations each; dev egress, endpoint, PostgreSQL), µs\n"
    );
    println!("| phase | median | min | max |");
    println!("|---|---|---|---|");
    stats("cold: process start to init done", &mut init);
    stats("cold: init's secret read (endpoint)", &mut secret);
    stats("cold: init's database connection", &mut connect);
    stats("first invocation", &mut first);
    stats("warm invocation (query + internet request)", &mut warm);
    println!(
        "\ncold start (init) / warm invocation, medians: {:.0}x",
        cold as f64 / hot.max(1) as f64
    );
}

/// Every stream sends and receives once; how many did.
fn exchange_all(streams: &mut [natd_tests::dataplane::Stream]) -> usize {
    std::thread::scope(|s| {
        let handles: Vec<_> = streams
            .iter_mut()
            .map(|st| s.spawn(move || st.exchange().is_ok()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .filter(|ok| *ok)
            .count()
    })
}

/// The hot standby pair: the holder dies `kills` times.
/// The pair's failover with AWS's delays off (reads consistent at once, the data plane
/// following the API within a tick), then on (reads `STALE_SECS` late, routes and
/// address moves reaching packets [`natd_tests::lab::DATAPLANE_DELAY`] after the API
/// shows them), in one run.
async fn pair_failover_delays(kills: usize, boot_delay: Duration) {
    for (label, stale, dataplane) in [
        ("delays off", "0", Duration::ZERO),
        (
            "delays on",
            natd_tests::emulator::STALE_SECS,
            natd_tests::lab::DATAPLANE_DELAY,
        ),
    ] {
        let emu = Emulator::start_env(None, &[("NATD_EMU_STALE_SECS", stale)]);
        println!(
            "\n### {label}: reads {stale} s stale, data plane {} ms behind the API",
            dataplane.as_millis()
        );
        pair_failover_in(
            Lab::with_delays(Arc::new(emu), boot_delay, dataplane).await,
            kills,
            boot_delay,
        )
        .await;
    }
}

async fn pair_failover(kills: usize, boot_delay: Duration) {
    let lab = Lab::with_boot_delay(Arc::new(Emulator::for_lab()), boot_delay).await;
    pair_failover_in(lab, kills, boot_delay).await;
}

async fn pair_failover_in(lab: Lab, kills: usize, boot_delay: Duration) {
    setup_dev(&lab, &["--ha"]);
    let eip = lab.egress_ips("bench").remove(0);
    let holders = |lab: &Lab| lab.private_routes();
    // Both instances up, the standby syncing.
    let ready = |lab: &Lab, holder: &str| {
        let instances = lab.instances();
        instances
            .keys()
            .find(|i| i.as_str() != holder)
            .filter(|s| {
                let log = lab.natd_log(s);
                log.contains("conntrackd syncing") && log.contains("pair: standby")
            })
            .cloned()
    };
    let start = Instant::now();
    let mut holder = loop {
        let h = holders(&lab);
        if h[0].starts_with("i-")
            && h.iter().all(|x| *x == h[0])
            && lab.fetch_async(0).await.ok().as_deref() == Some(eip.as_str())
            && ready(&lab, &h[0]).is_some()
        {
            break h[0].clone();
        }
        assert!(start.elapsed() < Duration::from_secs(300), "no pair");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut streams = lab.streams(0, 30).unwrap();
    streams.extend(lab.streams(1, 30).unwrap());
    let total_streams = streams.len();
    assert_eq!(exchange_all(&mut streams), total_streams);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let private = Netns::named(&lab.private[0].1.name);
    let (mut gaps, mut survived, mut same_ip, mut changes) = (vec![], vec![], 0, vec![]);
    let (mut silent, mut took, mut confirmed, mut flowing) = (vec![], vec![], vec![], vec![]);
    for n in 0..kills {
        let before = holders(&lab);
        let killed = lab.crash(&holder);
        let restored = loop {
            if probe(&private) {
                break Instant::now();
            }
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "no egress after kill {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let gap = restored - killed;
        // Route changes per table over the next 3 s.
        let mut last = before.clone();
        let mut changed = vec![0u32; before.len()];
        let sample_until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < sample_until {
            let now = holders(&lab);
            for (i, (a, b)) in last.iter().zip(&now).enumerate() {
                if a != b && !b.is_empty() {
                    changed[i] += 1;
                }
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let alive = exchange_all(&mut streams);
        let seen = lab.fetch_async(0).await.unwrap_or_default();
        if seen == eip {
            same_ip += 1;
        }
        let next = last[0].clone();
        // natd's own share, from the new holder's log: how long the holder was silent
        // when the check started, and the decision to the last call's answer.
        let log = lab.natd_log(&next);
        let number_before = |line: &str, unit: &str| -> Option<u128> {
            let at = line.find(unit)?;
            line[..at].rsplit(' ').next()?.parse().ok()
        };
        if let Some(line) = log
            .lines()
            .rev()
            .find(|l| l.contains("pair: taking over from"))
        {
            silent.extend(number_before(line, " ms ("));
        }
        if let Some(line) = log.lines().rev().find(|l| l.contains("takeover took")) {
            took.extend(number_before(line, " ms"));
        }
        // natd's confirmation comes a little after the takeover: wait for it.
        let waited = Instant::now();
        let line = loop {
            let log = lab.natd_log(&next);
            if let Some(l) = log.lines().rev().find(|l| l.contains("takeover confirmed")) {
                break Some(l.to_string());
            }
            if waited.elapsed() > Duration::from_secs(20) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if let Some(line) = line {
            let (imds, traffic) = line.split_once("; ").unwrap_or((&line, ""));
            confirmed.extend(number_before(imds, " ms"));
            flowing.extend(number_before(traffic, " ms"));
        }
        eprintln!(
            "pair kill {}: {holder} -> {next}, gap {} ms, {alive}/{total_streams} connections alive, server sees {seen}, route changes per table {changed:?}",
            n + 1,
            ms(gap)
        );
        gaps.push(ms(gap));
        survived.push(alive);
        changes.extend(changed);
        // As its group would once it notices: the dead instance goes, a replacement
        // boots and becomes the standby.
        tokio::time::sleep(Duration::from_secs(2)).await;
        lab.terminate(&holder).await;
        holder = next;
        let waiting = Instant::now();
        while ready(&lab, &holder).is_none() {
            assert!(
                waiting.elapsed() < Duration::from_secs(240),
                "no replacement standby"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Its copy of the holder's state arrives by conntrackd's resync.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "\nHot standby pair ({kills} kills of the holder, boot delay {} s), {total_streams} long-lived connections\n",
        boot_delay.as_secs_f64()
    );
    println!("| measure | median | min | max |");
    println!("|---|---|---|---|");
    stats("egress gap, kill to first new connection (ms)", &mut gaps);
    let mut alive: Vec<u128> = survived.iter().map(|a| *a as u128).collect();
    stats(
        &format!("connections alive after the failover (of {total_streams})"),
        &mut alive,
    );
    let mut per_table: Vec<u128> = changes.iter().map(|c| u128::from(*c)).collect();
    stats("route changes per table per failover", &mut per_table);
    // natd's own share, from its log: a row for each figure it gave.
    for (what, v) in [
        (
            "natd: holder silent when the standby checked it (ms)",
            &mut silent,
        ),
        (
            "natd: decision to the last takeover call answered, check included (ms)",
            &mut took,
        ),
        (
            "natd: decision to the moved address listed by IMDS (ms)",
            &mut confirmed,
        ),
        (
            "natd: decision to the first packet from the VPC forwarded (ms)",
            &mut flowing,
        ),
    ] {
        if !v.is_empty() {
            stats(what, v);
        }
    }
    println!("\nServer saw the stack's Elastic IP after {same_ip} of {kills} failovers.");
}

/// The failures of a pair other than a clean death, as natctl deploys it.
async fn pair_faults(runs: usize) {
    let lab = Lab::as_deployed(Arc::new(Emulator::for_lab())).await;
    setup_dev(&lab, &["--ha"]);
    let eip = lab.egress_ips("bench").remove(0);
    let routes = |lab: &Lab| lab.private_routes();
    let private = Netns::named(&lab.private[0].1.name);
    // The holder (both tables on it, egress by the Elastic IP) and a standby whose
    // check through it has passed.
    let pair = async |lab: &Lab| -> (String, String) {
        natd_tests::eventually(Duration::from_secs(300), "a pair", async || {
            let r = routes(lab);
            let holder = r[0].clone();
            if !holder.starts_with("i-") || r.iter().any(|x| *x != holder) {
                return None;
            }
            if lab.fetch_async(0).await.ok()? != eip {
                return None;
            }
            let standby = lab.instances().into_keys().find(|i| *i != holder)?;
            lab.natd_log(&standby)
                .contains(&format!("a check through {holder} passed"))
                .then_some((holder, standby))
        })
        .await
    };
    let gap_until_egress = |since: Instant| {
        let private = &private;
        async move {
            loop {
                if probe(private) {
                    break since.elapsed();
                }
                assert!(since.elapsed() < Duration::from_secs(90), "no egress");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut results: Vec<(&str, Vec<u128>, Vec<u128>, usize)> = Vec::new();

    // 1. The holder alive and beating, without its default route.
    let (mut gaps, mut alive, mut same) = (vec![], vec![], 0);
    let mut total = 0;
    for n in 0..runs {
        let (holder, standby) = pair(&lab).await;
        let mut streams = lab.streams(0, 20).unwrap();
        streams.extend(lab.streams(1, 20).unwrap());
        total = streams.len();
        assert_eq!(exchange_all(&mut streams), total);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let gateway = lab.exec(&holder, "ip route show default").unwrap();
        let broken = Instant::now();
        lab.exec(&holder, "ip route del default").unwrap();
        let gap = gap_until_egress(broken).await;
        let kept = exchange_all(&mut streams);
        let seen = lab.fetch_async(0).await.unwrap_or_default();
        same += usize::from(seen == eip);
        eprintln!(
            "holder without a default route {}: {holder} -> {:?}, gap {} ms, {kept}/{total} connections alive, server sees {seen}",
            n + 1,
            routes(&lab),
            ms(gap)
        );
        gaps.push(ms(gap));
        alive.push(kept as u128);
        lab.exec(&holder, &format!("ip route add {}", gateway.trim()))
            .unwrap();
        drop(streams);
        // The old holder, now the standby, may take the role back on routine checks
        // only after the hold-down (a minute).
        if n + 1 < runs {
            tokio::time::sleep(Duration::from_secs(62)).await;
            let _ = standby;
        }
    }
    results.push((
        "holder alive, beating, without its default route",
        gaps,
        alive,
        same,
    ));

    // 2. natd restarted on the holder, then the holder dies 3 s later.
    let (mut gaps, mut alive, mut same) = (vec![], vec![], 0);
    for n in 0..runs {
        let (holder, standby) = pair(&lab).await;
        let mut streams = lab.streams(0, 20).unwrap();
        streams.extend(lab.streams(1, 20).unwrap());
        total = streams.len();
        assert_eq!(exchange_all(&mut streams), total);
        let before = lab.natd_pids(&holder);
        lab.kill_natd(&holder);
        natd_tests::eventually(Duration::from_secs(30), "natd restarted", async || {
            let now = lab.natd_pids(&holder);
            (!now.is_empty() && now != before).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let killed = lab.crash(&holder);
        let gap = gap_until_egress(killed).await;
        let kept = exchange_all(&mut streams);
        let seen = lab.fetch_async(0).await.unwrap_or_default();
        same += usize::from(seen == eip);
        eprintln!(
            "natd restarted, then the holder died {}: {holder} -> {standby}, gap {} ms, {kept}/{total} connections alive, server sees {seen}",
            n + 1,
            ms(gap)
        );
        gaps.push(ms(gap));
        alive.push(kept as u128);
        drop(streams);
        tokio::time::sleep(Duration::from_secs(2)).await;
        lab.terminate(&holder).await;
    }
    results.push((
        "natd restarted on the holder, then the holder died 3 s later",
        gaps,
        alive,
        same,
    ));

    println!(
        "\nHot standby pair as natctl deploys it, {runs} runs each, {total} long-lived connections\n"
    );
    println!(
        "| failure | egress gap, median (min-max) ms | connections alive, median (min-max) | same Elastic IP |"
    );
    println!("|---|---|---|---|");
    for (what, mut gaps, mut alive, same) in results {
        gaps.sort_unstable();
        alive.sort_unstable();
        println!(
            "| {what} | {} ({}-{}) | {} ({}-{}) of {total} | {same} of {runs} |",
            gaps[gaps.len() / 2],
            gaps[0],
            gaps[gaps.len() - 1],
            alive[alive.len() / 2],
            alive[0],
            alive[alive.len() - 1]
        );
    }
}

/// `flows` concurrent connections to one destination through a pair with `ips` egress
/// addresses.
async fn egress_ports(ips: usize, flows: usize) {
    const HOSTS: usize = 4;
    let mut lab = Lab::new(Arc::new(Emulator::for_lab())).await;
    setup_dev(&lab, &["--ha", "--egress-ips", &ips.to_string()]);
    let eips = lab.egress_ips("bench");
    assert_eq!(eips.len(), ips);
    // The holder SNATs across all of them, and the standby syncs.
    let start = Instant::now();
    loop {
        let routes = lab.routes();
        let holder = routes
            .get(&lab.world.private_subnets[0])
            .filter(|h| h.starts_with("i-"));
        let snat_all = holder.is_some_and(|h| lab.snat_addresses(h) == ips);
        let syncing = lab
            .instances()
            .keys()
            .filter(|i| Some(*i) != holder)
            .any(|s| lab.natd_log(s).contains("conntrackd syncing"));
        if snat_all && syncing && lab.fetch_async(0).await.is_ok_and(|ip| eips.contains(&ip)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "no pair with {ips} addresses"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let hosts = lab.flow_hosts(0, HOSTS);
    // The router learns the new hosts' groups on its next tick.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_host = flows.div_ceil(HOSTS);
    let internet = lab.internet.name.clone();
    let f = tokio::task::spawn_blocking({
        let hosts: Vec<Netns> = hosts.iter().map(|h| Netns::named(&h.name)).collect();
        move || natd_tests::flows::Flows::open(&internet, &hosts, per_host)
    })
    .await
    .unwrap();
    let nat_entries = lab
        .routes()
        .get(&lab.world.private_subnets[0])
        .and_then(|h| lab.instances().get(h).cloned())
        .map(|ns| {
            Netns::named(&ns)
                .sh("cat /proc/sys/net/netfilter/nf_conntrack_count")
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    println!(
        "\nEgress addresses: --egress-ips {ips}, {} connections asked to {} from {HOSTS} hosts ({:.1} s)\n",
        HOSTS * per_host,
        natd_tests::flows::DEST,
        f.secs
    );
    println!(
        "| open at once | failed | seen by the server | why the others failed | NAT's conntrack entries |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {nat_entries} |",
        f.open,
        f.failed,
        f.seen
            .iter()
            .map(|(ip, n)| format!(
                "{ip}: {n}{}",
                if eips.contains(ip) {
                    ""
                } else {
                    " (not the stack's)"
                }
            ))
            .collect::<Vec<_>>()
            .join(", "),
        if f.errors.is_empty() {
            "-".to_string()
        } else {
            f.errors
                .iter()
                .map(|(e, n)| format!("{e}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    drop(f);
    drop(hosts);
    lab.shutdown();
}
