//! The demo: a VPC in a box (`natd_tests::lab`). A function put into the VPC reaches
//! nothing and doctor says why; natctl builds the dev egress and the function's wiring,
//! natd forwards a private subnet's requests, the NAT instance is killed and replaced
//! (the egress gap measured), the stack switches to prod NAT gateways while requests
//! keep flowing, teardown; then a hot standby pair whose holder dies (gap, connections
//! kept, same Elastic IP), and teardown leaves nothing.
//!
//! Run as root: `tests/demo` (installs what it needs first). Leaves no namespace or
//! process behind, also when interrupted (Ctrl-C or SIGTERM).

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::emulator::Emulator;
use natd_tests::lab::{Event, Groups, Lab, SECRETS_MANAGER, SERVER};
use natd_tests::world::IMAGE;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn say(s: &str) {
    println!("{s}");
}

/// Runs natctl against the lab's emulator (killed if the demo is interrupted) and
/// shows its output indented, as it comes: its progress (stderr) between the plan and
/// the result (stdout), in the order natctl wrote them.
async fn natctl(lab: &Lab, args: &[&str]) -> bool {
    use tokio::io::{AsyncBufReadExt, BufReader};
    say(&format!("   $ natctl {}", args.join(" ")));
    let mut cmd = tokio::process::Command::from(natd_tests::cli::command(&lab.emu, args));
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let line = tokio::select! {
            l = out.next_line(), if out_open => l.ok().flatten().or_else(|| { out_open = false; None }),
            l = err.next_line(), if err_open => l.ok().flatten().or_else(|| { err_open = false; None }),
        };
        if let Some(line) = line {
            say(&format!("   | {line}"));
        }
    }
    child.wait().await.unwrap().success()
}

/// Waits, printing a dot every half second, until `f` returns `Some`.
async fn wait<T>(
    what: &str,
    limit: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> (T, Duration) {
    let start = Instant::now();
    print!("   waiting for {what} ");
    let _ = std::io::stdout().flush();
    let mut dots = Instant::now();
    loop {
        if let Some(v) = f().await {
            let took = start.elapsed();
            println!(" {:.1} s", took.as_secs_f64());
            return (v, took);
        }
        assert!(
            start.elapsed() < limit,
            "gave up waiting for {what} after {limit:?}"
        );
        if dots.elapsed() > Duration::from_millis(500) {
            print!(".");
            let _ = std::io::stdout().flush();
            dots = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// doctor's verdict in a line: its answers for the function and how many findings
/// break something.
fn doctor_summary(lab: &Lab) -> String {
    let Some(v) = natd_tests::cli::doctor_json(&lab.emu, &lab.world.vpc, "app") else {
        return "no answer".into();
    };
    let a = &v["answers"][0];
    let yes = |q: &serde_json::Value| match q["ok"].as_bool() {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    let breaks = v["findings"]
        .as_array()
        .map(|f| f.iter().filter(|f| f["severity"] == "breaks").count())
        .unwrap_or(0);
    format!(
        "internet {}, secret {}, database {}; {breaks} finding(s) that break",
        yes(&a["internet"]),
        yes(&a["secret"]),
        a["databases"]
            .as_object()
            .and_then(|d| d.values().next())
            .map_or("-", yes)
    )
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

async fn story(summary: &mut Vec<(String, String)>) {
    say("1. A VPC in the AWS emulator, made real in network namespaces");
    let emu = Arc::new(Emulator::for_lab());
    let lab = Lab::new(emu).await;
    say(&format!(
        "   {}: public subnets in eu-west-1a and -1b, private subnets {} (10.20.1.0/24, a) and {} (10.20.2.0/24, b)",
        lab.world.vpc, lab.world.private_subnets[0], lab.world.private_subnets[1]
    ));
    say("   The lab routes each private subnet by its route table in the emulator, enforces");
    say("   source/dest check, and runs every NAT instance the emulator launches as a namespace");
    say(&format!(
        "   with its own IMDSv2 and natd. The internet server is {SERVER}."
    ));
    say("   It enforces the security groups and network ACLs in the emulator, too.");

    say("\n   The application: function app, its secret app/db, PostgreSQL instance app-db.");
    say("   The function is put into the VPC's private subnets, with the VPC's default group:");
    natd_tests::app::application(&lab.emu, &lab.world);
    let default_sg = lab.emu.aws(&[
        "ec2",
        "describe-security-groups",
        "--filters",
        &format!("Name=vpc-id,Values={}", lab.world.vpc),
        "Name=group-name,Values=default",
    ])["SecurityGroups"][0]["GroupId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let private: Vec<&str> = lab
        .world
        .private_subnets
        .iter()
        .map(String::as_str)
        .collect();
    wait(
        "Lambda to take the VPC config",
        Duration::from_secs(30),
        async || natd_tests::app::put_in_vpc(&lab.emu, &private, &[&default_sg]).then_some(()),
    )
    .await;
    // The function's database: PostgreSQL for app-db (its password is the secret's value).
    let db = lab.database("app-db", "app/db");
    let before = lab.fetch(0);
    say(&format!(
        "   function (private-a) -> internet: {}",
        before.as_ref().err().cloned().unwrap_or_default()
    ));
    // The handler's init reads the secret first (the database password): nothing in
    // the VPC leads to it, so the database is out of reach too.
    let cold = match lab.function(&lab.private[0].1, "app/db", &db) {
        Ok(_) => "init read the secret and connected to the database".to_string(),
        Err(e) => format!("init failed, no database password ({e})"),
    };
    say(&format!("   function (private-a) handler: {cold}"));
    summary.push(("before setup: function init".into(), cold));
    say("   natctl doctor says why:");
    natctl(
        &lab,
        &["doctor", "--vpc", &lab.world.vpc, "--lambda", "app"],
    )
    .await;
    summary.push((
        "before setup: function -> internet".into(),
        match before {
            Ok(seen) => format!("answered (server saw {seen})"),
            Err(e) => format!("failed ({e})"),
        },
    ));
    summary.push(("before setup: doctor".into(), doctor_summary(&lab)));

    say(
        "\n2. natctl builds the dev egress (one self-healing NAT instance) and the function's wiring",
    );
    let dev = [
        "setup",
        "--env",
        "dev",
        "--vpc",
        &lab.world.vpc,
        "--name",
        "demo",
        "--ami",
        IMAGE,
    ]
    .into_iter()
    .chain(natd_tests::app::WIRING)
    .collect::<Vec<_>>();
    assert!(natctl(&lab, &dev).await, "natctl setup --env dev failed");
    let ((first, seen), ready) = wait(
        "natd to take the routes",
        Duration::from_secs(90),
        async || {
            let hop = lab.routes().get(&lab.world.private_subnets[0]).cloned()?;
            let seen = lab.fetch_async(0).await.ok()?;
            lab.fetch_async(1).await.ok()?;
            Some((hop, seen))
        },
    )
    .await;
    say(&format!(
        "   private-a and private-b -> internet: OK; the server sees {seen} (NAT instance {first})"
    ));
    for line in lab.natd_log(&first).lines() {
        say(&format!("   natd | {}", line.trim()));
    }
    say("   natctl doctor, now:");
    natctl(
        &lab,
        &["doctor", "--vpc", &lab.world.vpc, "--lambda", "app"],
    )
    .await;
    summary.push(("after setup: doctor".into(), doctor_summary(&lab)));

    say("\n   The database: PostgreSQL for app-db in private-a (its password is the secret's");
    say("   value), with the DB instance's security groups (DatabaseSG admits LambdaSG only):");
    let other_sg = lab.emu.aws(&[
        "ec2",
        "create-security-group",
        "--group-name",
        "other-workload",
        "--description",
        "another workload of the VPC",
        "--vpc-id",
        &lab.world.vpc,
    ])["GroupId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let other = lab.host("other", 0, "10.20.1.20", Groups::Fixed(vec![other_sg]));
    let answer = |r: Result<String, String>| match r {
        Ok(v) => format!("answered ({v})"),
        Err(e) => format!("failed ({})", e.lines().next().unwrap_or_default()),
    };
    let select = "select current_user || ' on ' || split_part(version(), ' ', 2)";
    let (fn_db, other_db) = (
        answer(db.query(&lab.private[0].1, select)),
        answer(db.query(&other, select)),
    );
    say(&format!("   function (private-a) -> database: {fn_db}"));
    say(&format!(
        "   another host of private-a (10.20.1.20, without LambdaSG) -> database: {other_db}"
    ));
    let secret = lab.secret_from(&lab.private[0].1, "app/db");
    let via = lab.resolves(&lab.private[0].1).unwrap_or_default();
    let fn_secret = answer(
        secret
            .map(|_| format!("read by name; {SECRETS_MANAGER} is {via} in the VPC, the endpoint")),
    );
    say(&format!(
        "   function (private-a) -> secret app/db: {fn_secret}"
    ));
    // The handler as Lambda runs it: init once, then warm invocations.
    let (init, warm) = match lab.function(&lab.private[0].1, "app/db", &db) {
        Ok(mut f) => {
            let init = format!(
                "{} ms (secret {} ms, database connection {} ms)",
                f.init.as_millis(),
                f.secret.as_millis(),
                f.connect.as_millis()
            );
            let mut warm = Vec::new();
            for _ in 0..3 {
                warm.push(match f.invoke() {
                    Ok(i) => format!(
                        "{:.1} ms (db {}, server saw {})",
                        i.took.as_secs_f64() * 1000.0,
                        i.db,
                        i.internet
                    ),
                    Err(e) => format!("failed ({e})"),
                });
            }
            (init, warm.join("; "))
        }
        Err(e) => (format!("failed ({e})"), "-".into()),
    };
    say(&format!("   function (private-a) handler init: {init}"));
    say(&format!("   function (private-a) warm invocations: {warm}"));
    summary.push(("function: init (cold start)".into(), init));
    summary.push((
        "function: warm invocation".into(),
        warm.split("; ").next().unwrap_or_default().to_string(),
    ));
    summary.push(("function -> secret".into(), fn_secret));
    summary.push(("function -> database".into(), fn_db));
    summary.push(("other host -> database".into(), other_db));
    summary.push((
        "function -> internet".into(),
        answer(lab.fetch(0).map(|seen| format!("the server saw {seen}"))),
    ));
    summary.push(("dev: setup to egress working".into(), secs(ready)));
    summary.push(("dev: server sees".into(), format!("{seen} ({first})")));

    say("\n3. The NAT instance dies");
    lab.world
        .ec2
        .terminate_instances()
        .instance_ids(&first)
        .send()
        .await
        .unwrap();
    let killed = Instant::now();
    say(&format!(
        "   terminated {first}; probing from private-a every 100 ms (a new instance takes {} s to boot, NATD_LAB_BOOT_DELAY_SECS)",
        lab.boot_delay().as_secs_f64()
    ));
    let (second, gap) = wait(
        "egress to come back",
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
    for (at, e) in lab.events() {
        if at < killed {
            continue;
        }
        let what = match e {
            Event::Gone(i) => format!("{i} terminated; its namespace is gone"),
            Event::Booted(i) => format!("the group launched {i}; natd starts"),
            Event::Ready(i) => format!("natd on {i}: forwarding ready"),
            Event::Route(s, h) => format!("{s} now routes to {h}"),
            other => format!("{other:?}"),
        };
        say(&format!(
            "   +{:>6.2} s  {what}",
            (at - killed).as_secs_f64()
        ));
    }
    say(&format!(
        "   egress is back through {second} after {}: the server sees {}",
        secs(gap),
        lab.fetch(0).unwrap_or_default()
    ));
    summary.push((
        format!(
            "failover: egress gap (kill to first reply; boot {} s)",
            lab.boot_delay().as_secs_f64()
        ),
        secs(gap),
    ));

    say("\n4. Switching the stack to prod (a NAT gateway per AZ) while both subnets keep asking");
    let prober = lab.probe();
    // A short drain for the demo; the default (30 s) also covers AWS route propagation.
    let prod = [
        "setup",
        "--env",
        "prod",
        "--vpc",
        &lab.world.vpc,
        "--name",
        "demo",
        "--drain-seconds",
        "3",
    ];
    let switched = natctl(&lab, &prod).await;
    wait(
        "the dev instance to go",
        Duration::from_secs(30),
        async || lab.instances().is_empty().then_some(()),
    )
    .await;
    let results = prober.stop();
    let failed = results.iter().filter(|r| r.is_err()).count();
    let ok = results.len() - failed;
    assert!(switched, "natctl setup --env prod failed");
    say(&format!(
        "   requests during the switch: {ok} answered, {failed} failed"
    ));
    say(&format!(
        "   private-a -> internet: the server sees {}; private-b: {} (each AZ its own gateway)",
        lab.fetch(0).unwrap_or_default(),
        lab.fetch(1).unwrap_or_default()
    ));
    summary.push((
        "dev -> prod switch: requests answered / failed".into(),
        format!("{ok} / {failed}"),
    ));
    natctl(&lab, &["status", "--name", "demo"]).await;

    say("\n5. Teardown");
    assert!(
        natctl(&lab, &["teardown", "--name", "demo"]).await,
        "teardown failed"
    );
    wait("the lab to follow", Duration::from_secs(10), async || {
        lab.routes().values().all(|r| r == "none").then_some(())
    })
    .await;
    say(&format!(
        "   private-a -> internet: {}",
        lab.fetch(0).err().unwrap_or_default()
    ));

    say("\n6. The hot standby pair: failover in about a second, connections kept");
    let ha = [
        "setup",
        "--env",
        "dev",
        "--ha",
        "--vpc",
        &lab.world.vpc,
        "--name",
        "demo",
        "--ami",
        IMAGE,
    ];
    assert!(
        natctl(&lab, &ha).await,
        "natctl setup --env dev --ha failed"
    );
    let eip = lab
        .egress_ips("demo")
        .into_iter()
        .next()
        .unwrap_or_default();
    let (holder, _) = wait(
        "the pair: egress by the Elastic IP, the standby syncing",
        Duration::from_secs(180),
        async || {
            let holder = lab.routes().get(&lab.world.private_subnets[0]).cloned()?;
            let instances = lab.instances();
            let standby = instances.keys().find(|i| **i != holder)?;
            let log = lab.natd_log(standby);
            (lab.fetch_async(0).await.ok()? == eip
                && log.contains("conntrackd syncing")
                && log.contains("pair: standby"))
            .then_some(holder)
        },
    )
    .await;
    let mut streams = lab.streams(0, 20).unwrap_or_default();
    streams.extend(lab.streams(1, 20).unwrap_or_default());
    say(&format!(
        "   {holder} holds the routes and {eip}; {} long-lived connections open through it",
        streams.len()
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = lab.crash(&holder);
    say(&format!(
        "   {holder} dies (its namespace and interface gone at once); probing every 100 ms"
    ));
    wait(
        "egress through the standby",
        Duration::from_secs(30),
        async || lab.fetch_async(0).await.ok(),
    )
    .await;
    let pair_gap = killed.elapsed();
    let seen = lab.fetch(0).unwrap_or_default();
    let alive = streams
        .iter_mut()
        .map(|s| s.exchange())
        .filter(Result::is_ok)
        .count();
    say(&format!(
        "   egress is back after {}: the server sees {seen}; {alive} of {} connections still send and receive",
        secs(pair_gap),
        streams.len()
    ));
    summary.push((
        "pair failover: egress gap (holder killed)".into(),
        secs(pair_gap),
    ));
    summary.push((
        "pair failover: connections alive".into(),
        format!("{alive} / {}", streams.len()),
    ));
    summary.push((
        "pair failover: egress address".into(),
        if seen == eip {
            format!("{seen} (unchanged)")
        } else {
            format!("{seen} (was {eip})")
        },
    ));
    drop(streams);
    let _ = lab
        .world
        .ec2
        .terminate_instances()
        .instance_ids(&holder)
        .send()
        .await;
    natctl(&lab, &["status", "--name", "demo"]).await;
    assert!(
        natctl(&lab, &["teardown", "--name", "demo"]).await,
        "teardown failed"
    );
    wait("the lab to follow", Duration::from_secs(30), async || {
        lab.instances().is_empty().then_some(())
    })
    .await;
    summary.push((
        "after teardown: NAT namespaces left".into(),
        lab.instances().len().to_string(),
    ));
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Binaries are built (or found fresh) before the story starts, so an interrupt
    // during the story is answered at once.
    natd_tests::bin("natctl");
    let mut summary = Vec::new();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    tokio::select! {
        () = story(&mut summary) => {}
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted: cleaning up");
            return;
        }
        _ = term.recv() => {
            println!("\nterminated: cleaning up");
            return;
        }
    };
    println!("\nSummary");
    let width = summary.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in summary {
        println!("  {k:width$}  {v}");
    }
}
