//! natd's kernel configuration on a real kernel: a "private" namespace reaches an
//! "internet" namespace only through the "NAT instance" namespace where natd runs.
//!
//!   private 10.20.1.10/24 --- 10.20.1.1 [nat: natd] ens5 198.51.100.2 --- 198.51.100.1 internet
//!
//! The internet namespace has no route back to 10.20.0.0/16, so only masquerading can
//! make replies arrive.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::emulator::Emulator;
use natd_tests::eventually;
use natd_tests::netns::Netns;
use natd_tests::world::{NatHost, World, text};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const SERVER: &str = "198.51.100.1:8080";
const PRIVATE: &str = "10.20.1.10:2222";

/// A TCP server in `ns` at `addr` that answers each connection with the peer address it
/// sees, then closes.
fn serve_peer_address(ns: &Netns, addr: &str) {
    let addr: SocketAddr = addr.parse().unwrap();
    let listener = ns.run(move || TcpListener::bind(addr).unwrap());
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let peer = c
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = c.write_all(peer.as_bytes());
        }
    });
}

/// Connects from `ns` to `addr`; returns what the server said, or the error.
fn fetch(ns: &Netns, addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().unwrap();
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(800))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
}

fn natd_rules(ns: &Netns) -> String {
    ns.sh("iptables-save")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

struct Lab {
    _emu: Emulator,
    host: NatHost,
    private: Netns,
    internet: Netns,
}

async fn lab() -> Lab {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let nat = w.instance("dev").await;
    let rtb = w.route_table(Some("dev")).await;
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
    serve_peer_address(&internet, SERVER);
    serve_peer_address(&private, PRIVATE);
    let _ = rtb;
    Lab {
        _emu: emu,
        host,
        private,
        internet,
    }
}

#[tokio::test]
async fn natd_makes_the_private_namespace_reach_the_internet_through_it() {
    let l = lab().await;
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
    let l = lab().await;
    // The internet side routes the VPC's range at the NAT (as a hostile neighbour would).
    l.internet.sh("ip route add 10.20.0.0/16 via 198.51.100.2");
    // Control: with plain forwarding and no natd, the private server is reachable.
    l.host.ns.sh("sysctl -qw net.ipv4.ip_forward=1");
    assert_eq!(
        fetch(&l.internet, PRIVATE).unwrap(),
        "198.51.100.1",
        "path works without natd"
    );

    let out = l.host.once(&l.host.config("dev", ""));
    assert!(out.status.success(), "{}", text(&out));
    let e = fetch(&l.internet, PRIVATE).expect_err("inbound must be refused");
    assert!(!e.is_empty());
    // Replies to connections from inside still pass.
    assert_eq!(fetch(&l.private, SERVER).unwrap(), "198.51.100.2");
}

#[tokio::test]
async fn drift_is_repaired_on_the_next_pass() {
    let l = lab().await;
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
