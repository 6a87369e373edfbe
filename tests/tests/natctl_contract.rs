//! natctl's contract with its user, end to end against the emulator: teardown's dry
//! run changes nothing, an endpoint that never answers fails within the timeout, every
//! error is JSON with `--output json`, a same-named resource of someone else is never
//! adopted, drift is repaired, and a stack that does not exist is said to.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::cli::{natctl, snapshot, stdout, take_over_like_natd};
use natd_tests::emulator::{Emulator, REGION, TEST_KEY, is_mutating};
use natd_tests::world::{IMAGE, World, text};
use std::time::{Duration, Instant};

fn dev_setup<'a>(w: &'a World, stack: &'a str) -> Vec<&'a str> {
    vec![
        "setup", "--env", "dev", "--vpc", &w.vpc, "--name", stack, "--ami", IMAGE,
    ]
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", text(out)))
}

#[tokio::test]
async fn teardown_dry_run_shows_what_would_go_and_changes_nothing() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let out = natctl(&emu, &dev_setup(&w, "d1"));
    assert!(out.status.success(), "{}", text(&out));
    take_over_like_natd(&emu, &w, "d1").await;
    let before = snapshot(&emu, &w.vpc);
    let calls_before = emu.calls().len();

    let out = natctl(&emu, &["teardown", "--name", "d1", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = stdout(&out);
    assert!(shown.contains("would remove"), "{shown}");
    for part in [
        "auto scaling group natd-d1",
        "IAM role natd-d1",
        "launch template natd-d1",
        "route table tag natd:egress",
    ] {
        assert!(shown.contains(part), "{part} missing from: {shown}");
    }
    let out = natctl(
        &emu,
        &["teardown", "--name", "d1", "--dry-run", "--output", "json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v = json_of(&out);
    assert_eq!(v["applied"], false);
    let steps = v["steps"].as_array().unwrap();
    assert!(
        steps.iter().any(|s| s["step"] == "remove"
            && s["part"] == "nat_instance"
            && s["action"] == "delete_group"),
        "{v}"
    );

    // Nothing changed: the same state, and no mutating call reached AWS.
    assert_eq!(snapshot(&emu, &w.vpc), before);
    let mutating: Vec<String> = emu.calls()[calls_before..]
        .iter()
        .filter(|c| is_mutating(c))
        .cloned()
        .collect();
    assert!(mutating.is_empty(), "dry run mutated: {mutating:?}");

    // The real teardown removes exactly what the dry run listed.
    let out = natctl(&emu, &["teardown", "--name", "d1"]);
    assert!(out.status.success(), "{}", text(&out));
    let removed = stdout(&out);
    for line in shown.lines().skip(1) {
        assert!(
            removed.contains(line.trim()),
            "{line} not removed: {removed}"
        );
    }
}

/// A TCP listener on 127.0.0.1 that accepts connections and never answers.
fn silent_endpoint() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    port
}

/// Runs natctl against `port` and returns its output, killing it after `limit`.
fn run_bounded(port: u16, args: &[&str], limit: Duration) -> std::process::Output {
    let url = format!("http://127.0.0.1:{port}");
    let mut c = std::process::Command::new(natd_tests::bin("natctl"));
    c.args(["--endpoint-url", &url, "--region", REGION])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", TEST_KEY.0)
        .env("AWS_SECRET_ACCESS_KEY", TEST_KEY.1)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("natctl still waiting after {limit:?}: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn an_endpoint_that_never_answers_fails_within_the_timeout_naming_it() {
    let port = silent_endpoint();
    // Default timeouts: a call gives up after 30 s; allow for start-up around it.
    let out = run_bounded(
        port,
        &["status", "--name", "quiet"],
        Duration::from_secs(45),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("30 s"), "{err}");
    assert!(
        !err.contains("DispatchFailure") && !err.contains("{"),
        "no SDK dump: {err}"
    );

    // Shorter timeouts are honoured, and the failure is JSON when JSON was asked for.
    let out = run_bounded(
        port,
        &[
            "--call-timeout",
            "2",
            "--read-timeout",
            "1",
            "--output",
            "json",
            "status",
            "--name",
            "quiet",
        ],
        Duration::from_secs(15),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v = json_of(&out);
    assert_eq!(v["error"]["kind"], "timeout", "{v}");
    assert_eq!(v["error"]["after_secs"], 2, "{v}");
    assert!(
        v["error"]["endpoint"]
            .as_str()
            .unwrap()
            .contains(&port.to_string()),
        "{v}"
    );
}

#[tokio::test]
async fn with_json_output_every_error_is_a_json_object_on_stdout() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    for (args, kind, needle, code) in [
        (
            vec![
                "setup",
                "--env",
                "dev",
                "--vpc",
                "vpc-0123456789abcdef0",
                "--ami",
                IMAGE,
            ],
            "bad_input",
            "vpc-0123456789abcdef0",
            2,
        ),
        (
            vec!["setup", "--env", "staging", "--vpc", &w.vpc],
            "bad_input",
            "staging",
            2,
        ),
        (
            vec!["setup", "--env", "dev", "--vpc", &w.vpc, "--name", "Dev_1"],
            "bad_input",
            "Dev_1",
            2,
        ),
        (vec!["status", "--name", "ghost"], "bad_input", "ghost", 2),
        (
            vec!["doctor", "--vpc", "vpc-0000000000000dead"],
            "bad_input",
            "vpc-0000000000000dead",
            2,
        ),
    ] {
        let mut all = vec!["--output", "json"];
        all.extend(args.iter());
        let out = natctl(&emu, &all);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out));
        let v = json_of(&out);
        assert_eq!(v["error"]["kind"], kind, "{args:?}: {v}");
        assert_eq!(v["error"]["exit_status"], code, "{args:?}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{args:?}: {v}"
        );
        // The sentence is on stderr too.
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}"
        );
    }
    // Text output: the sentence only, no JSON.
    let out = natctl(&emu, &["status", "--name", "ghost"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stdout(&out).is_empty(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stack ghost not found"));
}

#[tokio::test]
async fn a_same_named_resource_of_someone_else_is_refused_not_adopted() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    // Someone else's role happens to be called natd-f1 (no natd:stack tag).
    emu.aws(&[
        "iam",
        "create-role",
        "--role-name",
        "natd-f1",
        "--assume-role-policy-document",
        "{}",
    ]);
    let before = snapshot(&emu, &w.vpc);
    let out = natctl(&emu, &dev_setup(&w, "f1"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("IAM role natd-f1") && err.contains("natd:stack=f1"),
        "{err}"
    );
    assert_eq!(snapshot(&emu, &w.vpc), before, "nothing created");
    // Teardown leaves it alone.
    let out = natctl(&emu, &["teardown", "--name", "f1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out).trim(), "Nothing to remove for stack f1.");
    let roles = emu.aws(&["iam", "list-roles"]);
    assert!(
        roles["Roles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["RoleName"] == "natd-f1")
    );
}

#[tokio::test]
async fn setup_output_json_says_applied_only_after_applying() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let mut plan = dev_setup(&w, "j1");
    plan[0] = "plan";
    plan.extend(["--output", "json"]);
    let out = natctl(&emu, &plan);
    assert!(out.status.success(), "{}", text(&out));
    let v = json_of(&out);
    assert_eq!(v["applied"], false, "{v}");
    assert_eq!(v["env"], "dev");
    assert_eq!(v["steps"][0]["step"], "build", "{v}");
    assert_eq!(v["steps"][0]["part"], "nat_instance", "{v}");
    assert_eq!(
        emu.aws(&["autoscaling", "describe-auto-scaling-groups"])["AutoScalingGroups"],
        serde_json::json!([]),
        "plan created nothing"
    );
    let mut setup = dev_setup(&w, "j1");
    setup.extend(["--output", "json"]);
    let out = natctl(&emu, &setup);
    assert!(out.status.success(), "{}", text(&out));
    let v = json_of(&out);
    assert_eq!(v["applied"], true, "{v}");
    assert_eq!(
        emu.aws(&["autoscaling", "describe-auto-scaling-groups"])["AutoScalingGroups"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let out = natctl(&emu, &setup);
    let v = json_of(&out);
    assert_eq!(v["applied"], false, "nothing to apply: {v}");
    assert_eq!(v["steps"], serde_json::json!([]));
}

#[tokio::test]
async fn drift_natctl_used_to_leave_is_repaired_by_a_rerun() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let setup = dev_setup(&w, "dr");
    let out = natctl(&emu, &setup);
    assert!(out.status.success(), "{}", text(&out));
    let sg = emu.aws(&[
        "ec2",
        "describe-security-groups",
        "--filters",
        "Name=group-name,Values=natd-dr",
    ])["SecurityGroups"][0]["GroupId"]
        .as_str()
        .unwrap()
        .to_string();

    // Someone moves the group into a private subnet, admits a CIDR that is no private
    // subnet of the stack, shortens the hook, and points the template at another group.
    emu.aws(&[
        "autoscaling",
        "update-auto-scaling-group",
        "--auto-scaling-group-name",
        "natd-dr",
        "--vpc-zone-identifier",
        &w.private_subnets[0],
    ]);
    emu.aws(&[
        "ec2",
        "authorize-security-group-ingress",
        "--group-id",
        &sg,
        "--ip-permissions",
        "IpProtocol=-1,IpRanges=[{CidrIp=10.99.0.0/24}]",
    ]);
    emu.aws(&[
        "autoscaling",
        "put-lifecycle-hook",
        "--auto-scaling-group-name",
        "natd-dr",
        "--lifecycle-hook-name",
        "natd-ready",
        "--lifecycle-transition",
        "autoscaling:EC2_INSTANCE_LAUNCHING",
        "--heartbeat-timeout",
        "60",
    ]);
    let other = emu.aws(&[
        "ec2",
        "create-security-group",
        "--group-name",
        "someone-else",
        "--description",
        "x",
        "--vpc-id",
        &w.vpc,
    ])["GroupId"]
        .as_str()
        .unwrap()
        .to_string();
    let data = format!(
        "{{\"ImageId\":\"{IMAGE}\",\"InstanceType\":\"t4g.micro\",\"NetworkInterfaces\":[{{\"DeviceIndex\":0,\"Groups\":[\"{other}\"]}}]}}"
    );
    let v = emu.aws(&[
        "ec2",
        "create-launch-template-version",
        "--launch-template-name",
        "natd-dr",
        "--launch-template-data",
        &data,
    ]);
    let n = v["LaunchTemplateVersion"]["VersionNumber"]
        .as_i64()
        .unwrap()
        .to_string();
    emu.aws(&[
        "ec2",
        "modify-launch-template",
        "--launch-template-name",
        "natd-dr",
        "--default-version",
        &n,
    ]);

    let out = natctl(&emu, &setup);
    assert!(out.status.success(), "{}", text(&out));
    let said = stdout(&out);
    for change in [
        "stop admitting 10.99.0.0/24",
        &format!("natd-dr: launch in {}", w.public_subnet),
        "launch lifecycle hook natd-ready on natd-dr (600 s)",
        "new default version of natd-dr",
    ] {
        assert!(said.contains(change), "{change} missing from: {said}");
    }
    // The stack matches the spec again, read with the AWS CLI.
    let g = &emu.aws(&[
        "autoscaling",
        "describe-auto-scaling-groups",
        "--auto-scaling-group-names",
        "natd-dr",
    ])["AutoScalingGroups"][0];
    assert_eq!(g["VPCZoneIdentifier"], w.public_subnet.as_str());
    let hooks = emu.aws(&[
        "autoscaling",
        "describe-lifecycle-hooks",
        "--auto-scaling-group-name",
        "natd-dr",
    ]);
    assert_eq!(hooks["LifecycleHooks"][0]["HeartbeatTimeout"], 600);
    let sg_now = emu.aws(&["ec2", "describe-security-groups", "--group-ids", &sg]);
    let cidrs: Vec<&str> = sg_now["SecurityGroups"][0]["IpPermissions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["IpRanges"].as_array().unwrap())
        .map(|r| r["CidrIp"].as_str().unwrap())
        .collect();
    assert!(!cidrs.contains(&"10.99.0.0/24"), "{cidrs:?}");
    let lt = emu.aws(&[
        "ec2",
        "describe-launch-template-versions",
        "--launch-template-name",
        "natd-dr",
        "--versions",
        "$Default",
    ]);
    assert_eq!(
        lt["LaunchTemplateVersions"][0]["LaunchTemplateData"]["NetworkInterfaces"][0]["Groups"],
        serde_json::json!([sg])
    );
    let again = natctl(&emu, &setup);
    assert_eq!(
        stdout(&again).trim(),
        "No changes necessary.",
        "{}",
        text(&again)
    );
}

#[tokio::test]
async fn extra_tags_go_on_everything_setup_creates() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let mut setup = dev_setup(&w, "tg");
    setup.extend(["--tag", "team=payments", "--tag", "cost-center=42"]);
    let out = natctl(&emu, &setup);
    assert!(out.status.success(), "{}", text(&out));
    let has = |tags: &serde_json::Value| {
        tags.as_array()
            .unwrap()
            .iter()
            .any(|t| t["Key"] == "team" && t["Value"] == "payments")
    };
    let sg = emu.aws(&[
        "ec2",
        "describe-security-groups",
        "--filters",
        "Name=group-name,Values=natd-tg",
    ]);
    assert!(has(&sg["SecurityGroups"][0]["Tags"]), "{sg}");
    let lt = emu.aws(&[
        "ec2",
        "describe-launch-templates",
        "--launch-template-names",
        "natd-tg",
    ]);
    assert!(has(&lt["LaunchTemplates"][0]["Tags"]), "{lt}");
    let g = emu.aws(&[
        "autoscaling",
        "describe-auto-scaling-groups",
        "--auto-scaling-group-names",
        "natd-tg",
    ]);
    assert!(has(&g["AutoScalingGroups"][0]["Tags"]), "{g}");
    let role = emu.aws(&["iam", "list-role-tags", "--role-name", "natd-tg"]);
    assert!(has(&role["Tags"]), "{role}");
    // A re-run with the same tags changes nothing; a bad tag is refused, naming it.
    let again = natctl(&emu, &setup);
    assert_eq!(
        stdout(&again).trim(),
        "No changes necessary.",
        "{}",
        text(&again)
    );
    let mut bad = dev_setup(&w, "tg2");
    bad.extend(["--tag", "natd:stack=other"]);
    let out = natctl(&emu, &bad);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("natd:stack=other"));
}
