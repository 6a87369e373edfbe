//! The lab (a VPC in namespaces that follows the emulator) running the demo's story as
//! assertions: egress in dev, failover with no manual step, broken natd or forwarding
//! replaced, the switch to prod keeps egress, teardown leaves nothing, and a second
//! natd does not make routes flap.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::cli::{natctl, snapshot};
use natd_tests::emulator::Emulator;
use natd_tests::lab::{Event, Lab};
use natd_tests::world::{IMAGE, text};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Polls `f` every 100 ms until it returns `Some`, or panics after `limit`.
async fn until<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "no {what} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Egress from both private subnets works; returns the address the server saw.
async fn egress(lab: &Lab, limit: Duration) -> String {
    until("egress", limit, async || {
        let a = lab.fetch_async(0).await.ok()?;
        let b = lab.fetch_async(1).await.ok()?;
        (a == b).then_some(a)
    })
    .await
}

async fn dev(lab: &Lab) -> String {
    let out = natctl(
        &lab.emu,
        &[
            "setup",
            "--env",
            "dev",
            "--vpc",
            &lab.world.vpc,
            "--name",
            "lab",
            "--ami",
            IMAGE,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let seen = egress(lab, Duration::from_secs(90)).await;
    assert!(
        seen.starts_with("198.51.100."),
        "the server sees the NAT: {seen}"
    );
    let instances = lab.instances();
    assert_eq!(instances.len(), 1, "{instances:?}");
    instances.keys().next().unwrap().clone()
}

fn lab_log(lab: &Lab) -> String {
    let mut s = String::new();
    for (id, _) in lab.instances() {
        s.push_str(&format!("--- natd on {id}\n{}\n", lab.natd_log(&id)));
    }
    s.push_str(&format!(
        "events: {:?}\nroutes: {:?}",
        lab.events(),
        lab.routes()
    ));
    s
}

#[tokio::test]
async fn dev_egress_fails_over_then_switches_to_prod_and_tears_down_to_nothing() {
    let mut lab = Lab::new(Arc::new(Emulator::start())).await;
    let before = snapshot(&lab.emu, &lab.world.vpc);
    // No NAT yet: the private subnets have no default route, traffic goes nowhere.
    assert!(lab.fetch(0).is_err());

    let first = dev(&lab).await;
    let nat_address = lab.fetch(0).unwrap();
    assert_eq!(
        lab.routes()[&lab.world.private_subnets[0]],
        first,
        "{}",
        lab_log(&lab)
    );

    // The NAT instance dies. The group replaces it, the new natd takes the routes over,
    // egress comes back with no manual step.
    lab.world
        .ec2
        .terminate_instances()
        .instance_ids(&first)
        .send()
        .await
        .unwrap();
    let killed = Instant::now();
    let second = until(
        "egress through a new NAT",
        Duration::from_secs(120),
        async || {
            let hop = lab.routes().get(&lab.world.private_subnets[0]).cloned()?;
            if hop == first || !hop.starts_with("i-") {
                return None;
            }
            lab.fetch_async(0).await.ok().map(|_| hop)
        },
    )
    .await;
    let gap = killed.elapsed();
    egress(&lab, Duration::from_secs(30)).await;
    assert!(lab.instances().contains_key(&second));
    assert!(
        !lab.instances().contains_key(&first),
        "the dead instance's namespace is gone"
    );
    assert_ne!(
        lab.fetch(0).unwrap(),
        nat_address,
        "a new NAT, a new address"
    );
    eprintln!("egress gap after the NAT instance died: {gap:?}");

    // dev -> prod while both subnets keep making requests: none fails.
    let prober = lab.probe();
    let out = natctl(
        &lab.emu,
        &[
            "setup",
            "--env",
            "prod",
            "--vpc",
            &lab.world.vpc,
            "--name",
            "lab",
            "--drain-seconds",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // Let the lab catch up with the last change (the dev instance going away).
    until(
        "the dev instance gone",
        Duration::from_secs(30),
        async || lab.instances().is_empty().then_some(()),
    )
    .await;
    let results = prober.stop();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(results.len() >= 10, "{} probes", results.len());
    assert!(
        failed.is_empty(),
        "egress failed during the switch: {failed:?}\n{}",
        lab_log(&lab)
    );
    // Each subnet now leaves through its own AZ's gateway.
    let routes = lab.routes();
    let (a, b) = (
        &routes[&lab.world.private_subnets[0]],
        &routes[&lab.world.private_subnets[1]],
    );
    assert!(
        a.starts_with("nat-") && b.starts_with("nat-") && a != b,
        "{routes:?}"
    );
    let (seen_a, seen_b) = (lab.fetch(0).unwrap(), lab.fetch(1).unwrap());
    assert_ne!(seen_a, seen_b, "two gateways, two addresses");

    // Teardown: nothing of the stack is left, in the emulator or in the lab.
    let out = natctl(&lab.emu, &["teardown", "--name", "lab"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(snapshot(&lab.emu, &lab.world.vpc), before);
    until("the lab to follow", Duration::from_secs(10), async || {
        lab.routes().values().all(|r| r == "none").then_some(())
    })
    .await;
    assert!(lab.fetch(0).is_err());
    lab.shutdown();
}

#[tokio::test]
async fn an_instance_whose_forwarding_or_natd_breaks_is_replaced() {
    let lab = Lab::new(Arc::new(Emulator::start())).await;
    let first = dev(&lab).await;

    // Forwarding breaks in a way natd cannot repair: the internet drops this NAT's
    // traffic. natd's probe fails, it reports Unhealthy, the group replaces it.
    let public = lab.fetch(0).unwrap();
    lab.internet.sh(&format!(
        "iptables -I INPUT -s {public} -p tcp --dport 8080 -j DROP"
    ));
    assert!(lab.fetch(0).is_err());
    let second = until(
        "a replacement routing",
        Duration::from_secs(120),
        async || {
            let r = lab.routes().get(&lab.world.private_subnets[0]).cloned()?;
            (r.starts_with("i-") && r != first).then_some(r)
        },
    )
    .await;
    egress(&lab, Duration::from_secs(30)).await;
    let log = lab
        .events()
        .iter()
        .any(|(_, e)| *e == Event::Gone(first.clone()));
    assert!(log, "the broken instance is gone: {}", lab_log(&lab));

    // natd itself keeps crashing: the supervisor (as systemd) restarts it; egress keeps
    // working meanwhile (the kernel forwards without natd); after 5 failures natd
    // --report-unhealthy gets the instance replaced.
    for n in 0..5 {
        until("natd running", Duration::from_secs(10), async || {
            (!lab.natd_pids(&second).is_empty()).then_some(())
        })
        .await;
        lab.kill_natd(&second);
        if n == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(lab.fetch(0).is_ok(), "egress survives natd dying");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    until(
        "the crashing instance reported",
        Duration::from_secs(30),
        async || {
            lab.events()
                .iter()
                .any(|(_, e)| *e == Event::ReportedUnhealthy(second.clone()))
                .then_some(())
        },
    )
    .await;
    let third = until(
        "a replacement routing",
        Duration::from_secs(120),
        async || {
            let r = lab.routes().get(&lab.world.private_subnets[0]).cloned()?;
            (r.starts_with("i-") && r != second && r != first).then_some(r)
        },
    )
    .await;
    egress(&lab, Duration::from_secs(30)).await;

    // A second natd of the stack starts while the first is healthy: the route moves
    // to it once (newest wins) and then stays.
    let extra = lab.world.instance("lab").await;
    until(
        "the newer natd to hold the route",
        Duration::from_secs(60),
        async || lab.routes().values().all(|r| *r == extra).then_some(()),
    )
    .await;
    let settled = lab.events().len();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let changes: Vec<Event> = lab.events()[settled..]
        .iter()
        .map(|(_, e)| e.clone())
        .filter(|e| matches!(e, Event::Route(..)))
        .collect();
    assert!(
        changes.is_empty(),
        "routes flapped: {changes:?}\n{}",
        lab_log(&lab)
    );
    assert!(lab.instances().contains_key(&third));
    egress(&lab, Duration::from_secs(10)).await;
}
