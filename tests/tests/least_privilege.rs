//! natd does its whole job with exactly the policy `natd_contract::agent_policy`
//! grants (the one natctl puts on the instance role), with the emulator enforcing IAM,
//! and that policy denies what natd has no business doing.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_contract::agent_policy;
use natd_tests::emulator::{Emulator, TEST_KEY};
use natd_tests::world::{NatHost, World, text};

/// Calls made with the bootstrap key before the emulator starts enforcing IAM:
/// CreateUser, PutUserPolicy, CreateAccessKey.
const BOOTSTRAP_CALLS: u32 = 3;

async fn user_with_policy(
    iam: &aws_sdk_iam::Client,
    name: &str,
    policy: &serde_json::Value,
) -> (String, String) {
    iam.create_user().user_name(name).send().await.unwrap();
    iam.put_user_policy()
        .user_name(name)
        .policy_name(format!("{name}-policy"))
        .policy_document(policy.to_string())
        .send()
        .await
        .unwrap();
    let key = iam
        .create_access_key()
        .user_name(name)
        .send()
        .await
        .unwrap();
    let key = key.access_key().unwrap();
    (
        key.access_key_id().to_string(),
        key.secret_access_key().to_string(),
    )
}

async fn enforced() -> (Emulator, aws_config::SdkConfig) {
    let (emu, sdk, _) = enforced_with_key().await;
    (emu, sdk)
}

/// As [`enforced`], with the admin's key (for natctl and the AWS CLI).
async fn enforced_with_key() -> (Emulator, aws_config::SdkConfig, (String, String)) {
    let emu = Emulator::start_with(Some(BOOTSTRAP_CALLS));
    let bootstrap = aws_sdk_iam::Client::new(&emu.sdk_with(TEST_KEY));
    let admin_policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]
    });
    let admin = user_with_policy(&bootstrap, "admin", &admin_policy).await;
    emu.set_admin_key(&admin.0, &admin.1);
    let sdk = emu.sdk_with((&admin.0, &admin.1));
    // From here on every call is checked.
    let anonymous = aws_sdk_ec2::Client::new(&emu.sdk_with(TEST_KEY));
    assert!(
        anonymous.describe_vpcs().send().await.is_err(),
        "IAM is enforced"
    );
    (emu, sdk, admin)
}

#[tokio::test]
async fn natd_works_with_exactly_its_policy_and_nothing_more() {
    let (emu, admin) = enforced().await;
    let w = World::new(&admin).await;
    let (group, nat) = w.nat_group("dev", true).await;
    let tagged = w.route_table(Some("dev")).await;
    let untagged = w.route_table(None).await;
    let iam = aws_sdk_iam::Client::new(&admin);
    let key = user_with_policy(&iam, "natd", &agent_policy("dev")).await;

    // The stack's Elastic IP, which natd holds (--eip).
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
        .unwrap()
        .allocation_id()
        .unwrap()
        .to_string();

    let mut host = NatHost::new(&emu, &w, &nat).await;
    host.uplink_egress();
    let config = host.config("dev", "");
    let out = host.once_with(&config, (&key.0, &key.1));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(w.default_route(&tagged).await.unwrap().0, host.eni);
    assert!(!w.source_dest_check(&host.eni).await);
    assert_eq!(w.group_instances(&group).await[0].1, "InService");
    let a = w
        .ec2
        .describe_addresses()
        .allocation_ids(&alloc)
        .send()
        .await
        .unwrap();
    assert_eq!(
        a.addresses()[0].network_interface_id(),
        Some(host.eni.as_str()),
        "natd holds the stack's Elastic IP under its policy"
    );

    // natd published its health on its own instance under that policy.
    assert!(
        !text(&out).contains("could not publish health"),
        "{}",
        text(&out)
    );
    let tags = w
        .ec2
        .describe_tags()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("resource-id")
                .values(&nat)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let health = tags
        .tags()
        .iter()
        .find(|t| t.key() == Some(natd_contract::HEALTH_TAG))
        .and_then(|t| t.value())
        .unwrap_or_else(|| panic!("no natd:health tag: {tags:?}"));
    assert!(health.starts_with("data=ok control=ok"), "{health}");

    // The same key may not touch what is not natd's.
    let as_natd = aws_sdk_ec2::Client::new(&emu.sdk_with((&key.0, &key.1)));
    let tag = |k: &str| aws_sdk_ec2::types::Tag::builder().key(k).value("x").build();
    // Tags: only natd:health, only on the stack's instances.
    for (resource, key_name, why) in [
        (nat.as_str(), "Name", "another tag key on its own instance"),
        (nat.as_str(), natd_contract::STACK_TAG, "its stack tag"),
    ] {
        let denied = as_natd
            .create_tags()
            .resources(resource)
            .tags(tag(key_name))
            .send()
            .await
            .expect_err(why);
        assert_eq!(
            natd::cloud::ApiError::from(denied).code.as_deref(),
            Some("AccessDenied"),
            "{why}"
        );
    }
    let foreign = w.instance("other").await;
    let denied = as_natd
        .create_tags()
        .resources(&foreign)
        .tags(tag(natd_contract::HEALTH_TAG))
        .send()
        .await
        .expect_err("another stack's instance");
    assert_eq!(
        natd::cloud::ApiError::from(denied).code.as_deref(),
        Some("AccessDenied")
    );
    let denied = as_natd
        .create_route()
        .route_table_id(&untagged)
        .destination_cidr_block("0.0.0.0/0")
        .network_interface_id(&host.eni)
        .send()
        .await
        .expect_err("untagged table");
    assert_eq!(
        natd::cloud::ApiError::from(denied).code.as_deref(),
        Some("AccessDenied")
    );
    let denied = as_natd
        .terminate_instances()
        .instance_ids(&nat)
        .send()
        .await
        .expect_err("terminate");
    assert_eq!(
        natd::cloud::ApiError::from(denied).code.as_deref(),
        Some("AccessDenied")
    );
    assert_eq!(w.default_route(&untagged).await, None);
    // Nor change the source/dest check of an ENI that is not the stack's.
    let other = w.instance("other").await;
    let (other_eni, _) = w.eni(&other).await;
    let denied = as_natd
        .modify_network_interface_attribute()
        .network_interface_id(&other_eni)
        .source_dest_check(
            aws_sdk_ec2::types::AttributeBooleanValue::builder()
                .value(false)
                .build(),
        )
        .send()
        .await
        .expect_err("another stack's ENI");
    assert_eq!(
        natd::cloud::ApiError::from(denied).code.as_deref(),
        Some("AccessDenied")
    );
    assert!(w.source_dest_check(&other_eni).await);
    // Metrics: natd may publish in its namespace, and in no other.
    let cw = aws_sdk_cloudwatch::Client::new(&emu.sdk_with((&key.0, &key.1)));
    let put = |namespace: &'static str| {
        cw.put_metric_data()
            .namespace(namespace)
            .metric_data(
                aws_sdk_cloudwatch::types::MetricDatum::builder()
                    .metric_name("DataPlaneOk")
                    .value(1.0)
                    .build(),
            )
            .send()
    };
    put(natd_contract::metrics::NAMESPACE)
        .await
        .expect("natd publishes in its namespace");
    let denied = put("AWS/NATGateway").await.expect_err("another namespace");
    let code = natd::cloud::ApiError::from(denied).code.unwrap_or_default();
    assert!(code.starts_with("AccessDenied"), "{code}");

    // Telling the group it is unhealthy works under the same policy, and the group
    // replaces the instance.
    let out = host.report_unhealthy_with(&config, (&key.0, &key.1));
    assert!(out.status.success(), "{}", text(&out));
    natd_tests::eventually(
        std::time::Duration::from_secs(20),
        "the group to replace the instance",
        || async {
            let now = w.group_instances(&group).await;
            now.iter().all(|i| i.0 != nat).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn access_denied_is_a_clear_permanent_failure() {
    let (emu, admin) = enforced().await;
    let w = World::new(&admin).await;
    // The instance and its ENI belong to stack "other" (so its role may change that
    // ENI), but natd is configured for "dev": the other stack's role may not take
    // dev's routes.
    let nat = w.instance("other").await;
    let tagged = w.route_table(Some("dev")).await;
    // A role made for another stack may not take this stack's routes.
    let iam = aws_sdk_iam::Client::new(&admin);
    let key = user_with_policy(&iam, "natd-other", &agent_policy("other")).await;
    let mut host = NatHost::new(&emu, &w, &nat).await;
    host.uplink_egress();
    let out = host.once_with(&host.config("dev", ""), (&key.0, &key.1));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let log = text(&out);
    assert!(log.contains("giving up"), "{log}");
    assert!(
        log.contains("ReplaceRoute") || log.contains("CreateRoute"),
        "{log}"
    );
    assert!(log.contains(&tagged), "names the table: {log}");
    assert!(
        log.contains("not authorized") || log.contains("AccessDenied"),
        "{log}"
    );
    assert_eq!(w.default_route(&tagged).await, None);
}

/// A stack an exported CloudFormation template made: the private tables are not
/// tagged (a template cannot tag tables it does not own); natd, given the boot
/// configuration from the stack's launch template, takes over exactly the tables it
/// names with the policy the template granted, completes its launch, and natctl status
/// reads the stack as healthy.
#[tokio::test]
async fn natd_takes_over_the_untagged_tables_a_templates_boot_configuration_names() {
    let (emu, admin, admin_key) = enforced_with_key().await;
    let w = World::new(&admin).await;
    let natctl = |args: &[&str]| {
        natd_tests::cli::command(&emu, args)
            .env("AWS_ACCESS_KEY_ID", &admin_key.0)
            .env("AWS_SECRET_ACCESS_KEY", &admin_key.1)
            .output()
            .unwrap()
    };
    let out = natctl(&[
        "export",
        "--format",
        "cloudformation",
        "--env",
        "dev",
        "--vpc",
        &w.vpc,
        "--name",
        "cfn",
        "--ami",
        natd_tests::world::IMAGE,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let template = natd_tests::cli::stdout(&out);
    emu.aws(&[
        "cloudformation",
        "create-stack",
        "--stack-name",
        "natd-cfn",
        "--template-body",
        &template,
        "--capabilities",
        "CAPABILITY_NAMED_IAM",
    ]);
    let group = w.group_instances("natd-cfn").await;
    assert_eq!(group[0].1, "Pending:Wait", "{group:?}");
    let nat = group[0].0.clone();
    // Another table of the VPC, not named: natd leaves it alone.
    let other = w.route_table(None).await;

    // natd's configuration as the instance gets it at boot: the launch template's.
    let boot = natd_tests::cli::template_boot(&emu, "natd-cfn");
    // The private subnets route by the VPC's main table: the one table natd takes.
    assert_eq!(boot.route_tables.len(), 1, "{boot:?}");
    let boot_lines: String = boot
        .to_toml()
        .lines()
        .filter(|l| !l.starts_with("stack ="))
        .map(|l| format!("{l}\n"))
        .collect();

    // natd runs with exactly the policy the template gave its role.
    let policy = natd_tests::cli::role_policy(&emu, "natd-cfn");
    let iam = aws_sdk_iam::Client::new(&admin);
    let (id, secret) = user_with_policy(&iam, "natd-cfn-instance", &policy).await;

    let mut host = NatHost::new(&emu, &w, &nat).await;
    host.uplink_egress();
    let cfg = host.config("cfn", &boot_lines);
    let out = host.once_with(&cfg, (&id, &secret));
    assert!(out.status.success(), "{}", text(&out));
    for table in &boot.route_tables {
        let tags = emu.aws(&["ec2", "describe-route-tables", "--route-table-ids", table]);
        assert_eq!(
            tags["RouteTables"][0]["Tags"]
                .as_array()
                .map_or(0, Vec::len),
            0,
            "{table} stays untagged"
        );
        assert_eq!(
            w.default_route(table).await,
            Some((host.eni.clone(), "active".into())),
            "{table}"
        );
    }
    assert_eq!(w.default_route(&other).await, None, "an unnamed table");
    assert_eq!(
        w.group_instances("natd-cfn").await[0].1,
        "InService",
        "lifecycle action completed"
    );
    let status = natctl(&["status", "--name", "cfn", "--output", "json"]);
    let s: serde_json::Value =
        serde_json::from_slice(&status.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&status)));
    let held: Vec<bool> = s["route_tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["ok"] == true)
        .collect();
    assert_eq!(held, vec![true], "{s}");
}
