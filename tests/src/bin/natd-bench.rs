//! natd benchmark: start-to-ready time, idle RSS and CPU, binary size.
//!
//! Run: `cargo run -p natd-tests --bin natd-bench` (as root; builds natd in release
//! mode; the harness itself stays a debug build, it only drives and measures).
//! Each run starts a fresh emulator world and a NAT namespace, starts natd and times
//! from spawn to its "forwarding ready" log line (IMDS identity, kernel, source/dest
//! check, route takeover, lifecycle completion). Then one natd idles for a minute
//! (`NATD_BENCH_IDLE_SECS`) while RSS and CPU time are read from /proc.

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

fn main() {
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
