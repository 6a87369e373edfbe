//! natd under real-world faults, with a real data plane (see `natd_tests::dataplane`):
//! an AWS API outage while the NAT forwards, a data-plane failure during an outage, and
//! a VPC that grows and shrinks while natd runs.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::dataplane::{DataPlane, NAT_PUBLIC, SERVER, fetch, fetch_from};
use natd_tests::emulator::Emulator;
use natd_tests::eventually;
use natd_tests::world::World;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A systemd notify socket: every message natd sends, in order.
struct Notify {
    _dir: tempfile::TempDir,
    path: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Notify {
    fn listen() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = sock.recv(&mut buf) {
                into.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
            }
        });
        Self {
            _dir: dir,
            path: path.to_str().unwrap().to_string(),
            seen,
        }
    }

    fn statuses(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|m| m.strip_prefix("STATUS=").map(str::to_string))
            .collect()
    }
}

/// A NAT instance in an Auto Scaling group (so an Unhealthy report gets it replaced),
/// wired between the private and internet namespaces, its table tagged for natd.
async fn grouped_lab() -> (Emulator, World, String, String, String, DataPlane) {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let (group, nat) = w.nat_group("dev", false).await;
    let rtb = w.route_table(Some("dev")).await;
    let dp = DataPlane::new(&emu, &w, &nat).await;
    (emu, w, group, nat, rtb, dp)
}

#[tokio::test]
async fn an_api_outage_while_the_nat_forwards_does_not_get_it_replaced() {
    let (emu, w, group, nat, rtb, dp) = grouped_lab().await;
    let metrics_dir = tempfile::tempdir().unwrap();
    let metrics = metrics_dir.path().join("metrics.prom");
    let cfg = dp.host.config(
        "dev",
        &format!(
            "unhealthy_after = 2\nprobe_targets = [\"{SERVER}\"]\nprobe_timeout_ms = 500\nmetrics_file = \"{}\"",
            metrics.display()
        ),
    );
    let notify = Notify::listen();
    let natd = dp.host.spawn_env(
        &cfg,
        &natd_tests::bin("natd"),
        &[("NOTIFY_SOCKET", notify.path.as_str())],
    );
    let eni = dp.host.eni.clone();
    eventually(
        Duration::from_secs(30),
        "route takeover and egress",
        || async {
            let routed = w.default_route(&rtb).await.map(|r| r.0) == Some(eni.clone());
            (routed && fetch(&dp.private, SERVER).is_ok()).then_some(())
        },
    )
    .await;

    // Thirty passes' worth of outage (unhealthy_after = 2): every AWS call natd makes
    // fails, longer than the SDK's own retries of one call (up to ~15 s).
    emu.natd_outage(30.0, false);
    let outage = Instant::now();
    let (mut answered, mut refused) = (0, Vec::new());
    let mut saw_status = None;
    let mut saw_metrics = None;
    while outage.elapsed() < Duration::from_secs(30) {
        match fetch(&dp.private, SERVER) {
            Ok(peer) => {
                assert_eq!(peer, NAT_PUBLIC);
                answered += 1;
            }
            Err(e) => refused.push(e),
        }
        if saw_status.is_none() {
            saw_status = notify
                .statuses()
                .into_iter()
                .find(|s| s.contains("control plane unreachable"));
        }
        let text = std::fs::read_to_string(&metrics).unwrap_or_default();
        if text.contains("natd_control_plane_ok 0") {
            saw_metrics = Some(text);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        refused.is_empty(),
        "egress broke during the outage: {refused:?}"
    );
    assert!(answered > 20, "egress was exercised: {answered}");
    let status = saw_status.unwrap_or_else(|| {
        panic!(
            "STATUS never named the control-plane trouble: {:?}",
            notify.statuses()
        )
    });
    assert!(status.starts_with("forwarding via ens5"), "{status}");
    assert!(status.contains("not counted against health"), "{status}");
    let during = saw_metrics.expect("metrics showed the control plane down");
    assert!(during.contains("natd_forwarding 1"), "{during}");
    assert!(during.contains("natd_data_plane_failures 0"), "{during}");

    eventually(
        Duration::from_secs(60),
        "natd to reach AWS again",
        || async {
            natd.log()
                .contains("control plane answers again")
                .then_some(())
        },
    )
    .await;
    let calls = emu.calls();
    assert!(
        !calls.iter().any(|c| c == "SetInstanceHealth"),
        "natd reported a forwarding NAT Unhealthy: {calls:?}"
    );
    let members = w.group_instances(&group).await;
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(
        (
            members[0].0.as_str(),
            members[0].1.as_str(),
            members[0].2.as_str()
        ),
        (nat.as_str(), "InService", "Healthy")
    );
    assert_eq!(w.default_route(&rtb).await.unwrap().0, eni);
    let log = natd.log();
    assert!(log.contains("control plane trouble"), "{log}");
    assert!(!log.contains("data plane failing"), "{log}");

    // natd's health reaches natctl through the instance's natd:health tag.
    let after = eventually(Duration::from_secs(20), "natd:health tag", || async {
        let out = natd_tests::cli::natctl(&emu, &["status", "--name", "dev", "--output", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let natd = v["instances"][0]["natd"].clone();
        (natd["control"] == "ok" && natd["data"] == "ok" && !natd["api_outage"].is_null())
            .then_some(v)
    })
    .await;
    assert_eq!(after["instances"][0]["id"], nat.as_str(), "{after}");
    // natctl's reads are eventually consistent (and, as on AWS, not monotonic): once the
    // window has passed, every read shows the tag it saw.
    emu.settle().await;
    let text =
        natd_tests::cli::stdout(&natd_tests::cli::natctl(&emu, &["status", "--name", "dev"]));
    assert!(
        text.contains("natd: data plane ok, control plane ok"),
        "{text}"
    );
    assert!(text.contains("last AWS API outage"), "{text}");
}

#[tokio::test]
async fn a_data_plane_failure_during_an_api_outage_is_reported_once_aws_answers() {
    let (emu, w, group, nat, rtb, dp) = grouped_lab().await;
    let cfg = dp.host.config(
        "dev",
        &format!("unhealthy_after = 2\nprobe_targets = [\"{SERVER}\"]\nprobe_timeout_ms = 500"),
    );
    let natd = dp.host.spawn(&cfg);
    let eni = dp.host.eni.clone();
    eventually(
        Duration::from_secs(30),
        "route takeover and egress",
        || async {
            let routed = w.default_route(&rtb).await.map(|r| r.0) == Some(eni.clone());
            (routed && fetch(&dp.private, SERVER).is_ok()).then_some(())
        },
    )
    .await;
    // Long enough that natd notices it on a loaded machine and still decides within it.
    emu.natd_outage(30.0, false);
    let outage = Instant::now();
    eventually(
        Duration::from_secs(25),
        "natd to notice the outage",
        || async { natd.log().contains("control plane trouble").then_some(()) },
    )
    .await;
    // Now the data plane really fails: the uplink goes down, natd cannot repair that.
    dp.internet.sh("ip link set i0 down");
    eventually(
        Duration::from_secs(10),
        "natd to decide the instance must go",
        || async {
            natd.log()
                .contains("reporting Unhealthy as soon as AWS answers")
                .then_some(())
        },
    )
    .await;
    // Decided behaviour: while AWS cannot be reached the report cannot land; the
    // instance stays (nothing could replace it without the API either).
    if outage.elapsed() < Duration::from_secs(28) {
        let members = w.group_instances(&group).await;
        assert_eq!(members[0].0, nat);
        assert_eq!(members[0].2, "Healthy", "{members:?}");
    }
    // Once AWS answers, the due report goes out first and the group replaces it.
    let replacement = eventually(
        Duration::from_secs(90),
        "the group to replace the broken NAT",
        || async {
            w.group_instances(&group)
                .await
                .into_iter()
                .find(|m| m.0 != nat)
                .map(|m| m.0)
        },
    )
    .await;
    assert_ne!(replacement, nat);
    assert_eq!(w.instance_state(&nat).await, "terminated");
    assert!(emu.calls().iter().any(|c| c == "SetInstanceHealth"));
    let log = natd.log();
    assert!(log.contains("reported Unhealthy to natd-dev"), "{log}");
    assert!(log.contains("data plane failing"), "{log}");
}

#[tokio::test]
async fn a_cidr_block_associated_later_gets_egress_and_loses_it_when_disassociated() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let nat = w.instance("dev").await;
    w.route_table(Some("dev")).await;
    let dp = DataPlane::new(&emu, &w, &nat).await;
    // A host of the block the VPC is about to get, on the private side.
    dp.private.sh("ip addr add 10.21.1.10/24 dev p0");
    dp.host.ns.sh("ip addr add 10.21.1.1/24 dev in0");
    let natd = dp.host.spawn(&dp.host.config("dev", "interval_secs = 2"));
    eventually(Duration::from_secs(30), "egress for the VPC", || async {
        fetch(&dp.private, SERVER).ok()
    })
    .await;
    assert!(
        fetch_from(&dp.private, Some("10.21.1.10"), SERVER).is_err(),
        "a source outside the VPC's CIDRs is not forwarded"
    );

    let assoc = w
        .ec2
        .associate_vpc_cidr_block()
        .vpc_id(&w.vpc)
        .cidr_block("10.21.0.0/16")
        .send()
        .await
        .unwrap();
    let association = assoc
        .cidr_block_association()
        .unwrap()
        .association_id()
        .unwrap()
        .to_string();
    // Two passes (interval 2 s) and the time one takes.
    let peer = eventually(
        Duration::from_secs(6),
        "egress for the new block",
        || async { fetch_from(&dp.private, Some("10.21.1.10"), SERVER).ok() },
    )
    .await;
    assert_eq!(peer, NAT_PUBLIC, "masqueraded");
    let rules = dp.host.ns.sh("iptables-save");
    assert!(
        rules.contains("-A NATD-POSTROUTING -s 10.21.0.0/16 -o ens5 -j MASQUERADE"),
        "{rules}"
    );

    w.ec2
        .disassociate_vpc_cidr_block()
        .association_id(&association)
        .send()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(6),
        "the block to leave the rules",
        || async {
            let gone = !dp.host.ns.sh("iptables-save").contains("10.21.0.0/16");
            (gone && fetch_from(&dp.private, Some("10.21.1.10"), SERVER).is_err()).then_some(())
        },
    )
    .await;
    assert!(
        fetch(&dp.private, SERVER).is_ok(),
        "the primary block still has egress"
    );
    let log = natd.log();
    assert_eq!(
        log.matches("VPC CIDR blocks changed").count(),
        2,
        "each change logged once: {log}"
    );
    assert!(
        log.contains("10.20.0.0/16 -> 10.20.0.0/16,10.21.0.0/16"),
        "{log}"
    );
}

#[tokio::test]
async fn a_control_pass_stuck_on_the_api_does_not_delay_kernel_repair() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let nat = w.instance("dev").await;
    w.route_table(Some("dev")).await;
    let dp = DataPlane::new(&emu, &w, &nat).await;
    let natd = dp
        .host
        .spawn(&dp.host.config("dev", "control_deadline_secs = 15"));
    eventually(Duration::from_secs(30), "egress", || async {
        fetch(&dp.private, SERVER).ok()
    })
    .await;
    // A black-holed endpoint: natd's calls hang for the whole outage.
    emu.natd_outage(30.0, true);
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The kernel drifts while a control pass is stuck on the API.
    dp.host
        .ns
        .sh("iptables -t nat -F NATD-POSTROUTING && sysctl -qw net.ipv4.ip_forward=0");
    assert!(fetch(&dp.private, SERVER).is_err(), "drift breaks egress");
    eventually(
        Duration::from_secs(10),
        "the kernel repaired while AWS hangs",
        || async { fetch(&dp.private, SERVER).ok() },
    )
    .await;
    assert!(
        outage.elapsed() < Duration::from_secs(25),
        "repaired during the outage, not after it"
    );
    assert!(
        natd.log().contains("kernel drift repaired"),
        "{}",
        natd.log()
    );
    eventually(
        Duration::from_secs(30),
        "the stuck pass to end as control-plane trouble",
        || async { natd.log().contains("control plane trouble").then_some(()) },
    )
    .await;
    assert!(
        !natd.log().contains("data plane failing (3"),
        "{}",
        natd.log()
    );
}
