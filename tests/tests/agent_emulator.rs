//! natd against the AWS emulator and its IMDSv2 fixture, each natd in its own network
//! namespace whose egress interface leads to an empty namespace (no data plane here;
//! see kernel_netns.rs).

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::emulator::Emulator;
use natd_tests::eventually;
use natd_tests::world::{NatHost, World, text};
use std::time::Duration;

#[tokio::test]
async fn one_pass_takes_over_tagged_tables_only_and_completes_the_launch() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let (group, nat) = w.nat_group("dev", true).await;
    assert_eq!(
        w.group_instances(&group).await[0].1,
        "Pending:Wait",
        "hook holds the launch"
    );

    // Tagged: no default route; a blackhole left by a dead predecessor; one to the IGW.
    let empty = w.route_table(Some("dev")).await;
    let dead = w.instance("dev").await;
    let blackholed = w.route_table(Some("dev")).await;
    w.ec2
        .create_route()
        .route_table_id(&blackholed)
        .destination_cidr_block("0.0.0.0/0")
        .instance_id(&dead)
        .send()
        .await
        .unwrap();
    w.ec2
        .terminate_instances()
        .instance_ids(&dead)
        .send()
        .await
        .unwrap();
    assert_eq!(w.default_route(&blackholed).await.unwrap().1, "blackhole");
    let to_igw = w.route_table(Some("dev")).await;
    w.ec2
        .create_route()
        .route_table_id(&to_igw)
        .destination_cidr_block("0.0.0.0/0")
        .gateway_id(&w.igw)
        .send()
        .await
        .unwrap();
    // Not ours: untagged, and tagged for another stack.
    let other = w.instance("other").await;
    let untagged = w.route_table(None).await;
    w.ec2
        .create_route()
        .route_table_id(&untagged)
        .destination_cidr_block("0.0.0.0/0")
        .instance_id(&other)
        .send()
        .await
        .unwrap();
    let other_stack = w.route_table(Some("prod")).await;

    let mut host = NatHost::new(&emu, &w, &nat).await;
    host.uplink_egress();
    assert!(w.source_dest_check(&host.eni).await);
    let cfg = host.config("dev", "");
    let out = host.once(&cfg);
    assert!(out.status.success(), "{}", text(&out));

    for rtb in [&empty, &blackholed, &to_igw] {
        assert_eq!(
            w.default_route(rtb).await,
            Some((host.eni.clone(), "active".into())),
            "{rtb}"
        );
    }
    assert_eq!(w.default_route(&untagged).await.unwrap().0, other);
    assert_eq!(w.default_route(&other_stack).await, None);
    assert!(
        !w.source_dest_check(&host.eni).await,
        "source/dest check disabled"
    );
    assert_eq!(
        w.group_instances(&group).await[0].1,
        "InService",
        "lifecycle action completed"
    );
    let log = text(&out);
    assert!(log.contains("was blackhole"), "{log}");
    assert!(log.contains("forwarding ready"), "{log}");

    // A second pass changes nothing in EC2 and says so by not logging any change: once
    // EC2's reads can show the first pass's writes (within the window of eventual
    // consistency a pass reads the tables as they were, and writes the same route
    // again, which is harmless but not "nothing").
    emu.settle().await;
    let again = host.once(&cfg);
    assert!(again.status.success(), "{}", text(&again));
    assert!(!text(&again).contains("now targets"), "{}", text(&again));
    assert!(
        !text(&again).contains("source/dest check disabled"),
        "{}",
        text(&again)
    );
}

#[tokio::test]
async fn repeated_failed_passes_make_the_group_replace_the_instance() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let (group, nat) = w.nat_group("dev", false).await;
    let rtb = w.route_table(Some("dev")).await;
    let mut host = NatHost::new(&emu, &w, &nat).await;
    host.uplink_egress();
    // The data-plane probe cannot succeed: 127.0.0.1 is not reachable through the egress link.
    let cfg = host.config(
        "dev",
        "unhealthy_after = 2\nprobe_targets = [\"127.0.0.1:9\"]\nprobe_timeout_ms = 300",
    );
    let natd = host.spawn(&cfg);
    let replacement = eventually(
        Duration::from_secs(30),
        "the group to replace the instance",
        || async {
            let now = w.group_instances(&group).await;
            now.iter().find(|i| i.0 != nat).map(|i| i.0.clone())
        },
    )
    .await;
    assert_eq!(w.instance_state(&nat).await, "terminated");
    assert_ne!(replacement, nat);
    let log = natd.log();
    assert!(log.contains("reported Unhealthy"), "{log}");
    assert!(log.contains("probe 127.0.0.1:9"), "{log}");
    // It never forwarded, so it never took the route (make before break).
    assert_eq!(w.default_route(&rtb).await, None);
}

#[tokio::test]
async fn drift_in_ec2_is_repaired_and_sigterm_leaves_routes() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let nat = w.instance("dev").await;
    let rtb = w.route_table(Some("dev")).await;
    let mut host = NatHost::new(&emu, &w, &nat).await;
    host.uplink_egress();
    let mut natd = host.spawn(&host.config("dev", ""));
    let eni = host.eni.clone();
    eventually(Duration::from_secs(20), "route takeover", || async {
        (w.default_route(&rtb).await.map(|r| r.0) == Some(eni.clone())).then_some(())
    })
    .await;
    // Someone points the route elsewhere and turns the check back on.
    w.ec2
        .replace_route()
        .route_table_id(&rtb)
        .destination_cidr_block("0.0.0.0/0")
        .gateway_id(&w.igw)
        .send()
        .await
        .unwrap();
    w.ec2
        .modify_network_interface_attribute()
        .network_interface_id(&eni)
        .source_dest_check(
            aws_sdk_ec2::types::AttributeBooleanValue::builder()
                .value(true)
                .build(),
        )
        .send()
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "drift repair", || async {
        let route_back = w.default_route(&rtb).await.map(|r| r.0) == Some(eni.clone());
        (route_back && !w.source_dest_check(&eni).await).then_some(())
    })
    .await;
    assert!(
        natd.log().contains("source/dest check was on again"),
        "{}",
        natd.log()
    );
    assert_eq!(natd.terminate(), Some(0));
    assert!(
        natd.log().contains("routes stay in place"),
        "{}",
        natd.log()
    );
    assert_eq!(w.default_route(&rtb).await.unwrap().0, eni);
}

/// Settled, natd reads EC2 once per `drift_check_secs` (±20 %), not every pass, and
/// still repairs drift within that.
#[tokio::test]
async fn a_settled_natd_reads_ec2_at_its_drift_cadence_and_still_repairs_drift() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let nat = w.instance("dev").await;
    let rtb = w.route_table(Some("dev")).await;
    let mut host = NatHost::new(&emu, &w, &nat).await;
    host.uplink_egress();
    let _natd = host.spawn(&host.config("dev", "interval_secs = 1\ndrift_check_secs = 8"));
    let eni = host.eni.clone();
    eventually(Duration::from_secs(20), "route takeover", || async {
        (w.default_route(&rtb).await.map(|r| r.0) == Some(eni.clone())).then_some(())
    })
    .await;
    // One read of the source/dest check per control pass.
    let passes = |emu: &Emulator| {
        emu.calls()
            .iter()
            .filter(|c| *c == "DescribeNetworkInterfaceAttribute")
            .count()
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = passes(&emu);
    tokio::time::sleep(Duration::from_secs(16)).await;
    let during = passes(&emu) - before;
    // Every second would be 16; every 6.4-9.6 s is at most 3.
    assert!(
        (1..=3).contains(&during),
        "{during} control passes in 16 s at an 8 s drift cadence"
    );
    w.ec2
        .replace_route()
        .route_table_id(&rtb)
        .destination_cidr_block("0.0.0.0/0")
        .gateway_id(&w.igw)
        .send()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(14),
        "drift repair within the cadence",
        || async { (w.default_route(&rtb).await.map(|r| r.0) == Some(eni.clone())).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_second_natd_does_not_make_routes_flap() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let first = w.instance("dev").await;
    let rtb = w.route_table(Some("dev")).await;
    let mut a = NatHost::new(&emu, &w, &first).await;
    a.uplink_egress();
    let _natd_a = a.spawn(&a.config("dev", ""));
    let eni_a = a.eni.clone();
    eventually(
        Duration::from_secs(20),
        "first natd takes the route",
        || async {
            (w.default_route(&rtb).await.map(|r| r.0) == Some(eni_a.clone())).then_some(())
        },
    )
    .await;
    // An instance refresh: a second, newer instance of the same stack starts. EC2
    // launch times have whole seconds: the second must launch in a later second than
    // the first, which the test reads from EC2 rather than assuming.
    let launched = |id: String| {
        let ec2 = w.ec2.clone();
        async move {
            let r = ec2
                .describe_instances()
                .instance_ids(&id)
                .send()
                .await
                .unwrap();
            r.reservations()[0].instances()[0]
                .launch_time()
                .unwrap()
                .secs()
        }
    };
    let first_launch = launched(first.clone()).await;
    eventually(Duration::from_secs(5), "a later second", || async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        (now > first_launch).then_some(())
    })
    .await;
    let second = w.instance("dev").await;
    assert!(
        launched(second.clone()).await > first_launch,
        "the second instance is the newer one"
    );
    let mut b = NatHost::new(&emu, &w, &second).await;
    b.uplink_egress();
    let natd_b = b.spawn(&b.config("dev", ""));
    // Record the route's target for several passes of both agents.
    let mut targets = Vec::new();
    for _ in 0..60 {
        targets.push(w.default_route(&rtb).await.unwrap().0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    targets.dedup();
    assert_eq!(
        targets.last(),
        Some(&b.eni),
        "the newest natd holds the route: {targets:?}"
    );
    assert!(targets.len() <= 2, "route flapped: {targets:?}");
    assert!(
        natd_b.log().contains(&format!("was {}", a.eni)),
        "{}",
        natd_b.log()
    );
}

#[tokio::test]
async fn tagged_elastic_ip_moves_to_the_nat_instance_once_it_forwards() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let nat = w.instance("dev").await;
    let alloc = w
        .ec2
        .allocate_address()
        .domain(aws_sdk_ec2::types::DomainType::Vpc)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::ElasticIp)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key(natd_contract::EGRESS_TAG)
                        .value("dev")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let alloc_id = alloc.allocation_id().unwrap().to_string();
    let mut host = NatHost::new(&emu, &w, &nat).await;
    host.uplink_egress();
    let out = host.once(&host.config("dev", ""));
    assert!(out.status.success(), "{}", text(&out));
    let a = w
        .ec2
        .describe_addresses()
        .allocation_ids(&alloc_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        a.addresses()[0].network_interface_id(),
        Some(host.eni.as_str())
    );
    assert!(text(&out).contains("elastic IP"), "{}", text(&out));
}

#[tokio::test]
async fn speaks_the_systemd_notify_protocol() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let nat = w.instance("dev").await;
    w.route_table(Some("dev")).await;
    let mut host = NatHost::new(&emu, &w, &nat).await;
    host.uplink_egress();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _natd = host.spawn_env(
        &host.config("dev", ""),
        &natd_tests::bin("natd"),
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !(seen.iter().any(|m: &String| m == "READY=1")
        && seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3)
    {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{e}; got so far: {seen:?}"));
        seen.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    assert!(seen[0].starts_with("STATUS=starting"), "{seen:?}");
    let ready = seen.iter().position(|m| m == "READY=1").unwrap();
    assert!(
        seen[..ready]
            .iter()
            .any(|m| m.starts_with("STATUS=forwarding via ens5")),
        "status before READY: {seen:?}"
    );
}

/// natd publishes its metrics to CloudWatch itself: levels every period, an ENA
/// allowance counter's growth as its metric and in AllowanceExceeded, and while
/// CloudWatch (with every AWS endpoint) refuses natd, the points wait and arrive after.
#[tokio::test]
async fn metrics_reach_cloudwatch_and_wait_out_an_outage() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let nat = w.instance("dev").await;
    w.route_table(Some("dev")).await;
    let mut host = NatHost::new(&emu, &w, &nat).await;
    host.uplink_egress();
    let dir = tempfile::tempdir().unwrap();
    let ena = dir.path().join("ena.txt");
    let counters = |bw_in: u64| {
        std::fs::write(
            &ena,
            format!(
                "NIC statistics:\n     bw_in_allowance_exceeded: {bw_in}\n     bw_out_allowance_exceeded: 0\n     pps_allowance_exceeded: 0\n     conntrack_allowance_exceeded: 0\n     linklocal_allowance_exceeded: 0\n     conntrack_allowance_available: 4000\n"
            ),
        )
        .unwrap()
    };
    counters(0);
    let natd = host.spawn(&host.config(
        "dev",
        &format!(
            "cloudwatch_metrics = true\ncloudwatch_period_secs = 1\nena_stats_file = {:?}\n",
            ena.to_str().unwrap()
        ),
    ));
    let cw = aws_sdk_cloudwatch::Client::new(&emu.sdk());
    let names = || async {
        let r = cw
            .list_metrics()
            .namespace(natd_contract::metrics::NAMESPACE)
            .send()
            .await
            .unwrap();
        r.metrics()
            .iter()
            .filter(|m| {
                m.dimensions()
                    .iter()
                    .any(|d| d.name() == Some("StackName") && d.value() == Some("dev"))
            })
            .filter_map(|m| m.metric_name().map(str::to_string))
            .collect::<Vec<_>>()
    };
    eventually(Duration::from_secs(30), "levels published", || async {
        let n = names().await;
        (n.contains(&"DataPlaneOk".to_string())
            && n.contains(&"ConntrackAllowanceAvailable".to_string())
            && n.contains(&"BytesOutToDestination".to_string()))
        .then_some(())
    })
    .await;
    assert!(
        !names().await.contains(&"BwInAllowanceExceeded".to_string()),
        "a quiet counter at zero is not published (nor billed)"
    );
    let sum = |metric: &'static str, from: std::time::SystemTime| {
        let cw = cw.clone();
        async move {
            let r = cw
                .get_metric_statistics()
                .namespace("natd")
                .metric_name(metric)
                .dimensions(
                    aws_sdk_cloudwatch::types::Dimension::builder()
                        .name("StackName")
                        .value("dev")
                        .build(),
                )
                .start_time(aws_sdk_cloudwatch::primitives::DateTime::from(from))
                .end_time(aws_sdk_cloudwatch::primitives::DateTime::from(
                    std::time::SystemTime::now() + Duration::from_secs(60),
                ))
                .period(60)
                .statistics(aws_sdk_cloudwatch::types::Statistic::Sum)
                .send()
                .await
                .unwrap();
            r.datapoints().iter().filter_map(|d| d.sum()).sum::<f64>()
        }
    };
    // The stand-in allowance counter grows by 7: its metric and the sum of all say so.
    let start = std::time::SystemTime::now() - Duration::from_secs(120);
    counters(7);
    eventually(Duration::from_secs(30), "allowance published", || async {
        (sum("BwInAllowanceExceeded", start).await >= 7.0
            && sum("AllowanceExceeded", start).await >= 7.0)
            .then_some(())
    })
    .await;
    // CloudWatch refuses natd for 6 s; the counter grows meanwhile. Its points wait in
    // natd's buffer and arrive, with the times they were taken, once it answers again.
    let before = sum("BwInAllowanceExceeded", start).await;
    let outage_start = std::time::SystemTime::now();
    emu.natd_outage(6.0, false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    counters(10);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = sum("BwInAllowanceExceeded", start).await;
    assert_eq!(
        during, before,
        "nothing reaches CloudWatch during the outage"
    );
    eventually(
        Duration::from_secs(30),
        "buffered points arrive",
        || async { (sum("BwInAllowanceExceeded", outage_start).await >= 3.0).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(10), "natd says so", || async {
        natd.log()
            .contains("CloudWatch takes metrics again")
            .then_some(())
    })
    .await;
    assert!(
        natd.log().contains("cannot publish metrics to CloudWatch"),
        "{}",
        natd.log()
    );
}
