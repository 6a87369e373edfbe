//! The CloudWatch alarms natctl sets with a NAT-instance stack, checked with the AWS
//! CLI: created by setup, kept by a re-run, notifying the topic given, named by doctor
//! when in ALARM, shown by status, removed by teardown.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::cli::{natctl, stdout, take_over_like_natd};
use natd_tests::emulator::Emulator;
use natd_tests::world::{IMAGE, World, text};

fn alarms(emu: &Emulator, stack: &str) -> Vec<serde_json::Value> {
    let names: Vec<String> = natd_contract::metrics::alarms(true)
        .map(|a| natd_contract::Names(stack).alarm(a.suffix))
        .collect();
    let mut args = vec!["cloudwatch", "describe-alarms", "--alarm-names"];
    args.extend(names.iter().map(String::as_str));
    emu.aws(&args)["MetricAlarms"].as_array().unwrap().clone()
}

/// doctor's finding `check` on `vpc` (it must be there).
fn doctor_finding(emu: &Emulator, vpc: &str, check: &str) -> serde_json::Value {
    let out = natctl(emu, &["doctor", "--vpc", vpc, "--output", "json"]);
    let d: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)));
    d["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .cloned()
        .unwrap_or_else(|| panic!("no {check} finding: {d}"))
}

#[tokio::test]
async fn a_dev_stack_has_its_alarms_from_setup_to_teardown() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let setup = [
        "setup", "--env", "dev", "--vpc", &w.vpc, "--name", "al", "--ami", IMAGE,
    ];
    // A topic that is not an SNS topic ARN is refused before anything is made.
    let mut bad = setup.to_vec();
    bad.extend(["--alarm-topic", "arn:aws:sqs:eu-west-1:123456789012:q"]);
    let out = natctl(&emu, &bad);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("arn:aws:sqs:eu-west-1:123456789012:q"));
    assert!(alarms(&emu, "al").is_empty());

    let out = natctl(&emu, &setup);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("CloudWatch alarm natd-al-port-allocation-errors"),
        "the plan lists the alarms: {}",
        text(&out)
    );
    let a = alarms(&emu, "al");
    let mut names: Vec<&str> = a.iter().map(|x| x["AlarmName"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "natd-al-allowance-exceeded",
            "natd-al-connection-table",
            "natd-al-data-plane",
            "natd-al-failover",
            "natd-al-port-allocation-errors"
        ]
    );
    let port = a
        .iter()
        .find(|x| x["AlarmName"] == "natd-al-port-allocation-errors")
        .unwrap();
    assert_eq!(port["Namespace"], "natd");
    assert_eq!(port["MetricName"], "ErrorPortAllocation");
    assert_eq!(port["Statistic"], "Sum");
    assert_eq!(port["Dimensions"][0]["Name"], "StackName");
    assert_eq!(port["Dimensions"][0]["Value"], "al");
    let table = a
        .iter()
        .find(|x| x["AlarmName"] == "natd-al-connection-table")
        .unwrap();
    assert_eq!(table["Threshold"], 80.0);
    // natd is told to publish.
    let v = emu.aws(&[
        "ec2",
        "describe-launch-template-versions",
        "--launch-template-name",
        "natd-al",
    ]);
    let user_data = v["LaunchTemplateVersions"][0]["LaunchTemplateData"]["UserData"]
        .as_str()
        .unwrap();
    let decoded = String::from_utf8(aws_smithy_types::base64::decode(user_data).unwrap()).unwrap();
    assert!(decoded.contains("cloudwatch_metrics = true"), "{decoded}");

    take_over_like_natd(&emu, &w, "al").await;
    let again = natctl(&emu, &setup);
    assert_eq!(
        stdout(&again).trim(),
        "No changes necessary.",
        "{}",
        text(&again)
    );

    // A topic: every alarm notifies it; a re-run without the flag keeps it.
    let topic = "arn:aws:sns:eu-west-1:123456789012:ops";
    let mut with_topic = setup.to_vec();
    with_topic.extend(["--alarm-topic", topic]);
    let out = natctl(&emu, &with_topic);
    assert!(out.status.success(), "{}", text(&out));
    for x in alarms(&emu, "al") {
        assert_eq!(x["AlarmActions"], serde_json::json!([topic]), "{x}");
        assert_eq!(x["OKActions"], serde_json::json!([topic]), "{x}");
    }
    let again = natctl(&emu, &setup);
    assert_eq!(
        stdout(&again).trim(),
        "No changes necessary.",
        "{}",
        text(&again)
    );

    // An alarm in ALARM: doctor names it, status shows it.
    emu.aws(&[
        "cloudwatch",
        "set-alarm-state",
        "--alarm-name",
        "natd-al-port-allocation-errors",
        "--state-value",
        "ALARM",
        "--state-reason",
        "Threshold Crossed: 1 datapoint [12.0] was greater than the threshold (0.0).",
    ]);
    let firing = doctor_finding(&emu, &w.vpc, "alarm_in_alarm");
    assert_eq!(firing["resource"], "natd-al-port-allocation-errors");
    assert!(
        firing["evidence"][0]
            .as_str()
            .unwrap()
            .contains("Threshold Crossed"),
        "{firing}"
    );
    let status = natctl(&emu, &["status", "--name", "al"]);
    assert!(
        stdout(&status).contains("IN ALARM: natd-al-port-allocation-errors"),
        "{}",
        text(&status)
    );

    // Teardown removes them, and nothing else of CloudWatch.
    let out = natctl(&emu, &["teardown", "--name", "al"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(alarms(&emu, "al").is_empty(), "teardown removes the alarms");
}

#[tokio::test]
async fn a_stack_without_alarms_gets_advice_and_prod_refuses_an_alarm_topic() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let setup = [
        "setup", "--env", "dev", "--vpc", &w.vpc, "--name", "bare", "--ami", IMAGE,
    ];
    let out = natctl(&emu, &setup);
    assert!(out.status.success(), "{}", text(&out));
    // Someone deletes the alarms.
    let mut args = vec!["cloudwatch", "delete-alarms", "--alarm-names"];
    let names: Vec<String> = natd_contract::metrics::alarms(false)
        .map(|a| natd_contract::Names("bare").alarm(a.suffix))
        .collect();
    args.extend(names.iter().map(String::as_str));
    emu.aws(&args);
    let advice = doctor_finding(&emu, &w.vpc, "stack_without_alarms");
    assert_eq!(advice["severity"], "advice");
    assert!(advice["fix"].as_str().unwrap().contains("natctl setup"));
    // A re-run puts them back.
    let out = natctl(&emu, &setup);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(alarms(&emu, "bare").len(), 5);
    let out = natctl(
        &emu,
        &[
            "setup",
            "--env",
            "prod",
            "--vpc",
            &w.vpc,
            "--name",
            "bare",
            "--alarm-topic",
            "arn:aws:sns:eu-west-1:123456789012:ops",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--alarm-topic"), "{}", text(&out));
}
