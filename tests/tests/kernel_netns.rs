//! natd's kernel configuration on a real kernel: a "private" namespace reaches an
//! "internet" namespace only through the "NAT instance" namespace where natd runs (see
//! `natd_tests::dataplane` for the topology).

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::dataplane::{DataPlane, PRIVATE, SERVER, fetch};
use natd_tests::emulator::Emulator;
use natd_tests::eventually;
use natd_tests::netns::Netns;
use natd_tests::world::{World, text};
use std::time::Duration;

fn natd_rules(ns: &Netns) -> String {
    ns.sh("iptables-save")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The data plane, with a route table tagged for natd in the emulator.
async fn lab() -> (Emulator, DataPlane) {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let nat = w.instance("dev").await;
    w.route_table(Some("dev")).await;
    let dp = DataPlane::new(&emu, &w, &nat).await;
    (emu, dp)
}

#[tokio::test]
async fn natd_makes_the_private_namespace_reach_the_internet_through_it() {
    let (_emu, l) = lab().await;
    // Someone else's rules, which natd must leave alone.
    l.host.ns.sh(
        "iptables -t nat -A POSTROUTING -o lo -j RETURN && iptables -A FORWARD -i lo -j ACCEPT",
    );
    assert!(fetch(&l.private, SERVER).is_err(), "no egress before natd");

    let cfg = l.host.config("dev", "");
    let out = l.host.once(&cfg);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("kernel configured"), "{}", text(&out));
    assert_eq!(
        fetch(&l.private, SERVER).unwrap(),
        "198.51.100.2",
        "server sees the NAT's public address"
    );
    let first = natd_rules(&l.host.ns);
    assert!(first.contains("-A POSTROUTING -o lo -j RETURN"), "{first}");
    assert!(first.contains("-A FORWARD -i lo -j ACCEPT"), "{first}");
    assert!(
        first.contains("-A NATD-POSTROUTING -s 10.20.0.0/16 -o ens5 -j MASQUERADE"),
        "{first}"
    );
    assert_eq!(l.host.ns.sh("sysctl -n net.ipv4.ip_forward").trim(), "1");
    assert_eq!(
        l.host
            .ns
            .sh("sysctl -n net.ipv4.conf.ens5.rp_filter")
            .trim(),
        "2"
    );
    assert_eq!(
        l.host
            .ns
            .sh("sysctl -n net.ipv4.conf.all.send_redirects")
            .trim(),
        "0"
    );

    // A second apply changes nothing.
    let out = l.host.once(&cfg);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("kernel configured"), "{}", text(&out));
    assert!(!text(&out).contains("drift"), "{}", text(&out));
    assert_eq!(natd_rules(&l.host.ns), first);
}

#[tokio::test]
async fn new_connections_from_outside_are_dropped() {
    let (_emu, l) = lab().await;
    // The internet side routes the VPC's range at the NAT (as a hostile neighbour would).
    l.internet.sh("ip route add 10.20.0.0/16 via 198.51.100.2");
    // Control: with plain forwarding and no natd, the private server is reachable.
    l.host.ns.sh("sysctl -qw net.ipv4.ip_forward=1");
    // IPv6 routing on, as a host tool might leave it.
    l.host.ns.sh("sysctl -qw net.ipv6.conf.all.forwarding=1");
    assert_eq!(
        fetch(&l.internet, PRIVATE).unwrap(),
        "198.51.100.1",
        "path works without natd"
    );

    let out = l.host.once(&l.host.config("dev", ""));
    assert!(out.status.success(), "{}", text(&out));
    // No IPv6 door either: the instance routes no IPv6, and natd says what it found.
    assert_eq!(
        l.host
            .ns
            .sh("sysctl -n net.ipv6.conf.all.forwarding")
            .trim(),
        "0"
    );
    assert!(
        text(&out).contains("IPv6 forwarding was on"),
        "{}",
        text(&out)
    );
    let e = fetch(&l.internet, PRIVATE).expect_err("inbound must be refused");
    assert!(!e.is_empty());
    // Replies to connections from inside still pass.
    assert_eq!(fetch(&l.private, SERVER).unwrap(), "198.51.100.2");
}

#[tokio::test]
async fn drift_is_repaired_on_the_next_pass() {
    let (_emu, l) = lab().await;
    let natd = l.host.spawn(&l.host.config("dev", ""));
    let good = eventually(
        Duration::from_secs(20),
        "natd to configure the kernel",
        || async {
            let rules = natd_rules(&l.host.ns);
            (rules.contains("MASQUERADE") && fetch(&l.private, SERVER).is_ok()).then_some(rules)
        },
    )
    .await;
    // Flush natd's chain, drop its FORWARD jump, switch forwarding off.
    l.host.ns.sh(
        "iptables -t nat -F NATD-POSTROUTING && iptables -D FORWARD -j NATD-FORWARD && sysctl -qw net.ipv4.ip_forward=0",
    );
    assert!(fetch(&l.private, SERVER).is_err(), "drift breaks egress");
    eventually(
        Duration::from_secs(20),
        "natd to repair the kernel",
        || async {
            (natd_rules(&l.host.ns) == good && fetch(&l.private, SERVER).is_ok()).then_some(())
        },
    )
    .await;
    assert_eq!(l.host.ns.sh("sysctl -n net.ipv4.ip_forward").trim(), "1");
    assert!(
        natd.log().contains("kernel drift repaired"),
        "{}",
        natd.log()
    );
}

#[tokio::test]
async fn forwarding_switched_off_on_the_interface_alone_is_drift_repaired_on_the_next_pass() {
    let (_emu, l) = lab().await;
    let natd = l.host.spawn(&l.host.config("dev", ""));
    eventually(
        Duration::from_secs(20),
        "natd to configure the kernel",
        || async { fetch(&l.private, SERVER).ok() },
    )
    .await;
    // What a network manager or a stray tool can do: ip_forward stays 1, the
    // interface's own switch goes off, and nothing it receives is forwarded.
    // (Read back in the same shell: natd's next pass may repair it a moment later.)
    assert_eq!(
        l.host
            .ns
            .sh("sysctl -qw net.ipv4.conf.ens5.forwarding=0; sysctl -n net.ipv4.conf.ens5.forwarding net.ipv4.ip_forward")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", "1"]
    );
    eventually(
        Duration::from_secs(20),
        "natd to switch the interface's forwarding back on",
        || async {
            (l.host
                .ns
                .sh("sysctl -n net.ipv4.conf.ens5.forwarding")
                .trim()
                == "1"
                && fetch(&l.private, SERVER).is_ok())
            .then_some(())
        },
    )
    .await;
    assert!(
        natd.log().contains("net/ipv4/conf/ens5/forwarding"),
        "the repair names the setting: {}",
        natd.log()
    );
}

/// The rules of a built-in chain as `iptables -S` prints them, in order.
fn chain(ns: &Netns, table: &str, name: &str) -> Vec<String> {
    ns.sh(&format!("iptables -t {table} -S {name}"))
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn natds_jump_returns_to_the_top_and_foreign_rules_stay_byte_identical() {
    let (_emu, l) = lab().await;
    // The internet side routes the VPC's range at the NAT (as a hostile neighbour would).
    l.internet.sh("ip route add 10.20.0.0/16 via 198.51.100.2");
    let natd = l.host.spawn(&l.host.config("dev", ""));
    eventually(
        Duration::from_secs(20),
        "natd to configure the kernel",
        || async { fetch(&l.private, SERVER).is_ok().then_some(()) },
    )
    .await;
    assert!(fetch(&l.internet, PRIVATE).is_err(), "inbound dropped");

    // Other software: an ACCEPT above natd's jump (it would let the internet in past
    // natd's drop), a second natd jump at the bottom, and rules of its own elsewhere.
    l.host
        .ns
        .sh("iptables -I FORWARD 1 -d 10.20.0.0/16 -j ACCEPT \
         && iptables -A FORWARD -i lo -j ACCEPT \
         && iptables -A FORWARD -j NATD-FORWARD \
         && iptables -t nat -I POSTROUTING 1 -o lo -j RETURN \
         && iptables -t nat -A POSTROUTING -j NATD-POSTROUTING");
    let foreign = |rules: Vec<String>, jump: &str| -> Vec<String> {
        rules.into_iter().filter(|r| !r.ends_with(jump)).collect()
    };
    let forward_before = foreign(chain(&l.host.ns, "filter", "FORWARD"), "-j NATD-FORWARD");
    let post_before = foreign(
        chain(&l.host.ns, "nat", "POSTROUTING"),
        "-j NATD-POSTROUTING",
    );
    assert_eq!(forward_before.len(), 2, "{forward_before:?}");

    eventually(
        Duration::from_secs(20),
        "natd's jumps first and single again",
        || async {
            let f = chain(&l.host.ns, "filter", "FORWARD");
            let p = chain(&l.host.ns, "nat", "POSTROUTING");
            let one = |rules: &[String], jump: &str| {
                rules.first().map(String::as_str) == Some(jump)
                    && rules.iter().filter(|r| r.as_str() == jump).count() == 1
            };
            (one(&f, "-A FORWARD -j NATD-FORWARD") && one(&p, "-A POSTROUTING -j NATD-POSTROUTING"))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        foreign(chain(&l.host.ns, "filter", "FORWARD"), "-j NATD-FORWARD"),
        forward_before,
        "other software's FORWARD rules, in their order"
    );
    assert_eq!(
        foreign(
            chain(&l.host.ns, "nat", "POSTROUTING"),
            "-j NATD-POSTROUTING"
        ),
        post_before
    );
    assert!(
        fetch(&l.internet, PRIVATE).is_err(),
        "natd's drop applies again before the foreign ACCEPT"
    );
    assert!(fetch(&l.private, SERVER).is_ok());
    let log = natd.log();
    assert!(log.contains("natd's jump back to the top"), "{log}");
    assert!(log.contains("position"), "{log}");
}

#[tokio::test]
async fn natd_runs_on_the_nf_tables_backend() {
    // AL2023's kernel has no legacy ip_tables module: natd's iptables calls must work
    // through iptables-nft, which is what these tests run (tests/setup selects it).
    let version = std::process::Command::new("iptables")
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    assert!(version.contains("nf_tables"), "iptables backend: {version}");
    let (_emu, l) = lab().await;
    let out = l.host.once(&l.host.config("dev", ""));
    assert!(out.status.success(), "{}", text(&out));
    let nft = l.host.ns.sh("nft list ruleset");
    assert!(nft.contains("chain NATD-FORWARD"), "{nft}");
    assert!(nft.contains("chain NATD-POSTROUTING"), "{nft}");
    assert!(nft.contains("masquerade"), "{nft}");
    assert_eq!(fetch(&l.private, SERVER).unwrap(), "198.51.100.2");
}
