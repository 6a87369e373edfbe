//! natd benchmark: start-to-ready time, idle RSS and CPU, binary size.
//!
//! Run: `cargo run -p natd-tests --bin natd-bench` (as root; builds natd in release
//! mode; the harness itself stays a debug build, it only drives and measures).
//! Each run starts a fresh emulator world and a NAT namespace, starts natd and times
//! from spawn to its "forwarding ready" log line (IMDS identity, kernel, source/dest
//! check, route takeover, lifecycle completion). Then one natd idles for a minute
//! (`NATD_BENCH_IDLE_SECS`) while RSS and CPU time are read from /proc.
//! `NATD_BENCH_ONLY=calls` instead counts a settled natd's API calls per hour, its
//! default cadence beside reading EC2 at every pass (`NATD_BIN` picks the binary: the
//! count does not depend on the build).

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::emulator::Emulator;
use natd_tests::world::{NatHost, World};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const RUNS: usize = 10;

/// The natd to measure: `NATD_BIN`, or a fresh release build.
fn release_natd() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATD_BIN") {
        return PathBuf::from(bin);
    }
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "natd",
                "--bin",
                "natd",
            ])
            .current_dir(natd_tests::root())
            .status()
            .unwrap();
    assert!(status.success());
    natd_tests::root().join("target/release/natd")
}

fn proc_stat(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(") ")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of /proc/PID/stat (11 and 12 after the name).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    (rss_kb, ticks as f64 / hz)
}

/// Calls per hour of one settled natd, each on its own emulator: with `extra` as its
/// configuration's extra lines, over `secs` of steady state after it is ready.
async fn calls_per_hour(
    natd: &std::path::Path,
    extra: &str,
    secs: u64,
) -> (f64, Vec<(String, usize)>) {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let (_group, nat) = w.nat_group("calls", true).await;
    w.route_table(Some("calls")).await;
    let mut host = NatHost::new(&emu, &w, &nat).await;
    host.uplink_egress();
    let cfg = host.config("calls", extra);
    let d = host.spawn_with(&cfg, natd);
    let start = Instant::now();
    while !d.log().contains("forwarding ready") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "natd not ready: {}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settle: the launch action completed, the first passes done.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let before = emu.calls_by("app/natd").len();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    // natd's own calls (its user agent), not the IMDS fixture's reads of the emulator.
    let calls = emu.calls_by("app/natd");
    let window = &calls[before..];
    let mut by_op: std::collections::BTreeMap<String, usize> = Default::default();
    for c in window {
        *by_op.entry(c.clone()).or_default() += 1;
    }
    drop(d);
    (
        window.len() as f64 * 3600.0 / secs as f64,
        by_op.into_iter().collect(),
    )
}

/// `NATD_BENCH_ONLY=calls`: steady-state API calls per hour, natd's defaults against
/// an earlier natd (`NATD_BENCH_BEFORE=PATH`) or this one reading EC2 at every pass
/// (`drift_check_secs = 5` with the 5 s interval),
/// both running at once for `NATD_BENCH_CALLS_SECS` (default 300).
fn calls_main(natd: PathBuf) {
    let secs: u64 = std::env::var("NATD_BENCH_CALLS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // "Before": an earlier natd (`NATD_BENCH_BEFORE`, with its defaults), else this
        // natd reading EC2 at every pass it can.
        let before = std::env::var_os("NATD_BENCH_BEFORE").map(PathBuf::from);
        let (before_bin, before_cfg, before_name) = match &before {
            Some(b) => (
                b.clone(),
                "interval_secs = 5",
                format!("before ({}, interval 5 s)", b.display()),
            ),
            None => (
                natd.clone(),
                "interval_secs = 5\ndrift_check_secs = 5",
                "every pass (drift_check_secs = 5, interval 5 s)".to_string(),
            ),
        };
        let (every_pass, settled) = tokio::join!(
            calls_per_hour(&before_bin, before_cfg, secs),
            calls_per_hour(&natd, "interval_secs = 5", secs),
        );
        let show = |name: &str, (per_hour, ops): &(f64, Vec<(String, usize)>)| {
            println!("{name}: {per_hour:.0} calls per hour over {secs} s");
            for (op, n) in ops {
                println!("    {op}: {n}");
            }
        };
        show(&before_name, &every_pass);
        show(
            "natd's default (drift_check_secs = 60, interval 5 s)",
            &settled,
        );
        println!(
            "ratio: {:.1}x fewer calls",
            every_pass.0 / settled.0.max(1.0)
        );
    });
}

fn main() {
    if std::env::var("NATD_BENCH_ONLY").as_deref() == Ok("calls") {
        let natd = std::env::var_os("NATD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(release_natd);
        return calls_main(natd);
    }
    let natd = release_natd();
    let idle_secs: u64 = std::env::var("NATD_BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let emu = Emulator::start();
        let mut times = Vec::new();
        let mut last = None;
        for run in 0..RUNS {
            let w = World::new(&emu.sdk()).await;
            let (_group, nat) = w.nat_group(&format!("b{run}"), true).await;
            for _ in 0..2 {
                w.route_table(Some(&format!("b{run}"))).await;
            }
            let mut host = NatHost::new(&emu, &w, &nat).await;
            host.uplink_egress();
            let cfg = host.config(&format!("b{run}"), "interval_secs = 5");
            let start = Instant::now();
            let d = host.spawn_with(&cfg, &natd);
            loop {
                if d.log().contains("forwarding ready") {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(60), "natd not ready: {}", d.log());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            times.push(start.elapsed());
            last = Some((host, d));
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "start-to-ready over {RUNS} runs: median {:.0} ms, min {:.0} ms, max {:.0} ms",
            ms(times[RUNS / 2]),
            ms(times[0]),
            ms(times[RUNS - 1])
        );
        let (_host, d) = last.unwrap();
        let pid = d.child.id();
        let (_, cpu0) = proc_stat(pid);
        tokio::time::sleep(Duration::from_secs(idle_secs)).await;
        let (rss, cpu1) = proc_stat(pid);
        println!(
            "idle after {idle_secs} s (interval 5 s): RSS {:.1} MiB, CPU {:.2} s ({:.3}% of one core)",
            rss as f64 / 1024.0,
            cpu1 - cpu0,
            (cpu1 - cpu0) / idle_secs as f64 * 100.0
        );
        let size = std::fs::metadata(&natd).unwrap().len();
        println!("release binary (stripped, x86_64): {:.2} MiB", size as f64 / 1048576.0);
    });
}
