//! The Lambda wiring of `natctl setup` (LambdaSG, DatabaseSG, SecretsManagerSG, the
//! Secrets Manager endpoint, the execution role, the function's VPC config) on a
//! function, secret and DB instance created in the emulator, checked with the AWS CLI.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::app::{application, function, lambda_role};
use natd_tests::cli::{natctl, snapshot, stdout};
use natd_tests::emulator::{Emulator, is_mutating};
use natd_tests::world::{IMAGE, World, text};

fn group(emu: &Emulator, name: &str) -> serde_json::Value {
    let filter = format!("Name=group-name,Values={name}");
    let g = emu.aws(&["ec2", "describe-security-groups", "--filters", &filter]);
    g["SecurityGroups"][0].clone()
}

/// One ingress permission: (protocol, from, to, [source groups], [CIDRs]).
type Permission = (String, i64, i64, Vec<String>, Vec<String>);

/// The group's ingress permissions.
fn ingress(g: &serde_json::Value) -> Vec<Permission> {
    g["IpPermissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["IpProtocol"].as_str().unwrap().to_string(),
                p["FromPort"].as_i64().unwrap_or(-1),
                p["ToPort"].as_i64().unwrap_or(-1),
                p["UserIdGroupPairs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x["GroupId"].as_str().unwrap().to_string())
                    .collect(),
                p["IpRanges"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x["CidrIp"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn lambda_wiring_is_exactly_as_stated_and_teardown_restores_the_function() {
    // Lambda keeps the function's ENIs for a while after it leaves the VPC: long enough
    // here that teardown certainly meets them, however slow the machine.
    let emu = Emulator::start_env(None, &[("NATD_EMU_LAMBDA_ENI_RELEASE_SECS", "12")]);
    let w = World::new(&emu.sdk()).await;
    let secret_arn = application(&emu, &w);
    let before = snapshot(&emu, &w.vpc);
    let setup = [
        "setup",
        "--env",
        "dev",
        "--vpc",
        &w.vpc,
        "--name",
        "app",
        "--ami",
        IMAGE,
        "--lambda",
        "app",
        "--secret",
        "app/db",
        "--db-instance",
        "app-db",
        "--endpoint-access",
        "lambda",
    ];
    let out = natctl(&emu, &setup);
    assert!(out.status.success(), "{}", text(&out));
    // The plan says what LambdaSG-only access costs the rest of the VPC.
    assert!(
        stdout(&out).contains("workloads without LambdaSG lose Secrets Manager"),
        "{}",
        text(&out)
    );

    // Security groups: the database and the endpoint admit only LambdaSG, on their port.
    let lambda_sg = group(&emu, "natd-app-lambda");
    let lambda_id = lambda_sg["GroupId"].as_str().unwrap().to_string();
    let db_sg = group(&emu, "natd-app-database");
    assert_eq!(
        ingress(&db_sg),
        vec![("tcp".into(), 5432, 5432, vec![lambda_id.clone()], vec![])]
    );
    let sm_sg = group(&emu, "natd-app-secretsmanager");
    assert_eq!(
        ingress(&sm_sg),
        vec![("tcp".into(), 443, 443, vec![lambda_id.clone()], vec![])]
    );
    // DatabaseSG is on the DB instance.
    let db = emu.aws(&[
        "rds",
        "describe-db-instances",
        "--db-instance-identifier",
        "app-db",
    ]);
    let db_groups: Vec<&str> = db["DBInstances"][0]["VpcSecurityGroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["VpcSecurityGroupId"].as_str().unwrap())
        .collect();
    assert!(
        db_groups.contains(&db_sg["GroupId"].as_str().unwrap()),
        "{db_groups:?}"
    );
    // The endpoint: Secrets Manager, private DNS, one subnet per AZ, SecretsManagerSG.
    let filter = format!("Name=vpc-id,Values={}", w.vpc);
    let e = emu.aws(&["ec2", "describe-vpc-endpoints", "--filters", &filter]);
    let e = &e["VpcEndpoints"].as_array().unwrap();
    assert_eq!(e.len(), 1);
    let e = &e[0];
    assert_eq!(e["ServiceName"], "com.amazonaws.eu-west-1.secretsmanager");
    assert_eq!(e["VpcEndpointType"], "Interface");
    assert_eq!(e["PrivateDnsEnabled"], true);
    let mut subnets: Vec<&str> = e["SubnetIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    subnets.sort();
    let mut private: Vec<&str> = w.private_subnets.iter().map(String::as_str).collect();
    private.sort();
    assert_eq!(subnets, private);
    assert_eq!(e["Groups"][0]["GroupId"], sm_sg["GroupId"]);
    // The role: GetSecretValue on this one secret, nothing else of Secrets Manager.
    let p = emu.aws(&[
        "iam",
        "get-role-policy",
        "--role-name",
        "natd-app-lambda",
        "--policy-name",
        "natd-app-lambda",
    ]);
    let statements = p["PolicyDocument"]["Statement"].as_array().unwrap();
    let secret_statements: Vec<&serde_json::Value> = statements
        .iter()
        .filter(|s| s.to_string().contains("secretsmanager:"))
        .collect();
    assert_eq!(secret_statements.len(), 1, "{statements:?}");
    assert_eq!(
        secret_statements[0]["Action"],
        "secretsmanager:GetSecretValue"
    );
    assert_eq!(secret_statements[0]["Resource"], secret_arn.as_str());
    for s in statements {
        assert_ne!(s["Action"], "*");
        if s["Resource"] == "*" {
            for a in s["Action"].as_array().unwrap() {
                assert!(a.as_str().unwrap().starts_with("ec2:"), "{s}");
            }
        }
    }
    // The function: the new role, the private subnets, LambdaSG.
    let f = emu.aws(&["lambda", "get-function", "--function-name", "app"]);
    let conf = &f["Configuration"];
    assert!(
        conf["Role"]
            .as_str()
            .unwrap()
            .ends_with(":role/natd-app-lambda"),
        "{conf}"
    );
    let mut fsubnets: Vec<&str> = conf["VpcConfig"]["SubnetIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    fsubnets.sort();
    assert_eq!(fsubnets, private);
    assert_eq!(
        conf["VpcConfig"]["SecurityGroupIds"],
        serde_json::json!([lambda_id])
    );

    // Again: nothing to change, no mutating call.
    let before_calls = emu.calls().len();
    let again = natctl(&emu, &setup);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        stdout(&again).trim(),
        "No changes necessary.",
        "{}",
        text(&again)
    );
    let calls = emu.calls();
    let mutating: Vec<&String> = calls[before_calls..]
        .iter()
        .filter(|c| is_mutating(c))
        .collect();
    assert!(mutating.is_empty(), "{mutating:?}");

    // status shows the wiring.
    let st = natctl(&emu, &["status", "--name", "app", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["lambda"]["function"], "app", "{v}");
    assert_eq!(v["lambda"]["endpoint_private_dns"], true, "{v}");

    // doctor finds nothing wrong with what natctl built. (No natd runs in this tier:
    // on a slow run the stack's data-plane alarm, missing data breaching, rightly fires
    // once CloudWatch has gone minutes without natd's points; that finding is about
    // the absent natd, not the wiring.)
    let d = natctl(
        &emu,
        &[
            "doctor", "--vpc", &w.vpc, "--lambda", "app", "--output", "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap();
    let serious: Vec<&serde_json::Value> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] != "advice" && f["check"] != "alarm_in_alarm")
        .collect();
    assert!(serious.is_empty(), "{v}");
    // Its three answers are yes: the secret through the endpoint, the database, the
    // internet through the NAT instance.
    let a = &v["answers"][0];
    assert_eq!(a["function"], "app", "{v}");
    assert_eq!(a["secret"]["ok"], true, "{v}");
    assert!(
        a["secret"]["via"][0]
            .as_str()
            .unwrap()
            .starts_with("endpoint vpce-"),
        "{v}"
    );
    assert_eq!(a["databases"]["app-db"]["ok"], true, "{v}");
    assert_eq!(a["internet"]["ok"], true, "{v}");
    assert!(
        a["internet"]["via"][0]
            .as_str()
            .unwrap()
            .starts_with("NAT instance"),
        "{v}"
    );
    assert_eq!(d.status.code(), Some(0));
    // No reserved concurrency: the function may take the account's unreserved
    // concurrency (GetAccountSettings: 1,000, AWS's default quota) against the
    // database's 112 connections.
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "function_outscales_database")
        .unwrap_or_else(|| panic!("{v}"));
    let problem = f["problem"].as_str().unwrap();
    assert!(problem.contains("1000") && problem.contains("112"), "{f}");
    assert!(
        f.to_string().contains("unreserved concurrency"),
        "says where the figure comes from: {f}"
    );
    // The function may run 500 copies at once; its database (PostgreSQL on
    // db.t4g.micro) accepts about 112 connections: advice, with the fix.
    emu.aws(&[
        "lambda",
        "put-function-concurrency",
        "--function-name",
        "app",
        "--reserved-concurrent-executions",
        "500",
    ]);
    let d = natctl(
        &emu,
        &[
            "doctor", "--vpc", &w.vpc, "--lambda", "app", "--output", "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap();
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "function_outscales_database")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(f["severity"], "advice");
    let problem = f["problem"].as_str().unwrap();
    assert!(problem.contains("500") && problem.contains("112"), "{f}");
    assert!(f["fix"].as_str().unwrap().contains("RDS Proxy"), "{f}");
    assert_eq!(d.status.code(), Some(0), "advice only");

    // Teardown: the function has its role and VPC config back; the VPC is as before.
    // LambdaSG goes only once Lambda has released the function's network interfaces.
    let out = natctl(&emu, &["teardown", "--name", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("release the function's network interfaces"),
        "{}",
        text(&out)
    );
    assert_eq!(snapshot(&emu, &w.vpc), before);
}

#[tokio::test]
async fn a_missing_function_or_secret_is_refused_before_anything_is_created() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    application(&emu, &w);
    let before = snapshot(&emu, &w.vpc);
    for (args, named) in [
        (vec!["--lambda", "no-such-function"], "no-such-function"),
        (vec!["--lambda", "app", "--secret", "no/such"], "no/such"),
        (vec!["--lambda", "app", "--db-instance", "no-db"], "no-db"),
        (vec!["--secret", "app/db"], "--lambda"),
    ] {
        let mut cmd = vec![
            "setup", "--env", "dev", "--vpc", &w.vpc, "--name", "bad", "--ami", IMAGE,
        ];
        cmd.extend(args.iter());
        let out = natctl(&emu, &cmd);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{args:?}: {err}");
        assert_eq!(snapshot(&emu, &w.vpc), before, "{args:?} created something");
    }
}

/// A security group in `w`'s VPC; returns its id.
async fn security_group(w: &World, name: &str) -> String {
    let g = w
        .ec2
        .create_security_group()
        .group_name(name)
        .description(name)
        .vpc_id(&w.vpc)
        .send()
        .await
        .unwrap();
    g.group_id().unwrap().to_string()
}

fn findings(emu: &Emulator, args: &[&str]) -> Vec<String> {
    let mut cmd = vec!["doctor", "--output", "json"];
    cmd.extend(args);
    let out = natctl(emu, &cmd);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let found: Vec<String> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert!(
                !f["problem"].as_str().unwrap().is_empty()
                    && !f["fix"].as_str().unwrap().is_empty(),
                "{f}"
            );
            format!(
                "{} {}",
                f["check"].as_str().unwrap(),
                f["resource"].as_str().unwrap()
            )
        })
        .collect();
    // Exit status 3 only when something breaks; every finding has a severity and
    // evidence, and --strict makes any finding exit 3.
    let breaks = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "breaks")
        .count();
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(
                |f| ["breaks", "risk", "advice"].contains(&f["severity"].as_str().unwrap())
                    && f["evidence"].is_array()
            ),
        "{v}"
    );
    assert_eq!(v["counts"]["breaks"], breaks, "{v}");
    assert_eq!(
        out.status.code(),
        Some(if breaks == 0 { 0 } else { 3 }),
        "{}",
        text(&out)
    );
    let mut strict = cmd.clone();
    strict.push("--strict");
    let out = natctl(emu, &strict);
    assert_eq!(
        out.status.code(),
        Some(if found.is_empty() { 0 } else { 3 }),
        "{}",
        text(&out)
    );
    found
}

#[tokio::test]
async fn doctor_finds_each_mistake_in_a_vpc_built_wrong() {
    use aws_sdk_ec2::types::{IpPermission, IpRange, VpcEndpointType};
    let emu = Emulator::start();
    // VPC A: egress built wrong.
    let a = World::new(&emu.sdk()).await;
    let ec2 = &a.ec2;
    // One NAT gateway (AZ a) serving private subnets of AZs a and b.
    let eip = ec2
        .allocate_address()
        .domain(aws_sdk_ec2::types::DomainType::Vpc)
        .send()
        .await
        .unwrap();
    let gw = ec2
        .create_nat_gateway()
        .subnet_id(&a.public_subnet)
        .allocation_id(eip.allocation_id().unwrap())
        .send()
        .await
        .unwrap();
    let gw = gw
        .nat_gateway()
        .unwrap()
        .nat_gateway_id()
        .unwrap()
        .to_string();
    // A gateway is pending for a while, as on AWS: doctor would rightly say so.
    {
        use aws_sdk_ec2::client::Waiters;
        ec2.wait_until_nat_gateway_available()
            .nat_gateway_ids(&gw)
            .wait(std::time::Duration::from_secs(120))
            .await
            .unwrap();
    }
    let shared = a.route_table(None).await;
    ec2.create_route()
        .route_table_id(&shared)
        .destination_cidr_block("0.0.0.0/0")
        .nat_gateway_id(&gw)
        .send()
        .await
        .unwrap();
    for s in &a.private_subnets {
        ec2.associate_route_table()
            .route_table_id(&shared)
            .subnet_id(s)
            .send()
            .await
            .unwrap();
    }
    // A table whose NAT instance is gone (blackhole), and one whose NAT instance still
    // has source/dest check on.
    let dead = a.instance("other").await;
    let dead_table = a.route_table(None).await;
    ec2.create_route()
        .route_table_id(&dead_table)
        .destination_cidr_block("0.0.0.0/0")
        .instance_id(&dead)
        .send()
        .await
        .unwrap();
    ec2.terminate_instances()
        .instance_ids(&dead)
        .send()
        .await
        .unwrap();
    let checked = a.instance("other").await;
    let (checked_eni, _) = a.eni(&checked).await;
    let checked_table = a.route_table(None).await;
    ec2.create_route()
        .route_table_id(&checked_table)
        .destination_cidr_block("0.0.0.0/0")
        .network_interface_id(&checked_eni)
        .send()
        .await
        .unwrap();
    // A database security group open to the world and one open to the whole VPC.
    let db_open = security_group(&a, "orders-database").await;
    for cidr in ["0.0.0.0/0", "10.20.0.0/16"] {
        ec2.authorize_security_group_ingress()
            .group_id(&db_open)
            .ip_permissions(
                IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(5432)
                    .to_port(5432)
                    .ip_ranges(IpRange::builder().cidr_ip(cidr).build())
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    // An interface endpoint with private DNS off.
    let sts = ec2
        .create_vpc_endpoint()
        .vpc_id(&a.vpc)
        .vpc_endpoint_type(VpcEndpointType::Interface)
        .service_name("com.amazonaws.eu-west-1.sts")
        .subnet_ids(&a.private_subnets[0])
        .private_dns_enabled(false)
        .send()
        .await
        .unwrap();
    let sts = sts
        .vpc_endpoint()
        .unwrap()
        .vpc_endpoint_id()
        .unwrap()
        .to_string();
    let mut found = findings(&emu, &["--vpc", &a.vpc]);
    found.sort();
    let mut expected = vec![
        format!("one_nat_for_several_azs {gw}"),
        format!("blackhole_route {dead_table}"),
        format!("source_dest_check_on {checked_eni}"),
        format!("nat_without_public_ip {checked_eni}"),
        format!("database_sg_open {db_open}"),
        format!("database_sg_open {db_open}"),
        format!("endpoint_without_private_dns {sts}"),
        // The emulator's region has no trail, no detector, and the VPC no flow log.
        format!("flow_logs_off {}", a.vpc),
        format!("cloudtrail_off {}", a.vpc),
        format!("guardduty_off {}", a.vpc),
    ];
    expected.sort();
    assert_eq!(found, expected);

    // VPC B: a VPC function with no NAT route and no endpoint, whose role allows "*".
    let b = World::new(&emu.sdk()).await;
    let lambda_sg = security_group(&b, "lost-lambda").await;
    lambda_role(
        &emu,
        "lost-admin",
        Some(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
        ),
    );
    let vpc_config = format!(
        "SubnetIds={},SecurityGroupIds={lambda_sg}",
        b.private_subnets.join(",")
    );
    function(&emu, "lost", "lost-admin", Some(&vpc_config));
    let region_advice = [
        format!("cloudtrail_off {}", b.vpc),
        format!("flow_logs_off {}", b.vpc),
        format!("guardduty_off {}", b.vpc),
    ];
    let mut found = findings(&emu, &["--vpc", &b.vpc, "--lambda", "lost"]);
    found.sort();
    let mut expected = vec![
        "internet_unreachable lost".to_string(),
        "secret_unreachable lost".to_string(),
        "wildcard_role lost-admin".to_string(),
    ];
    expected.extend(region_advice.iter().cloned());
    expected.sort();
    assert_eq!(found, expected);
    // Someone adds the Secrets Manager endpoint, but its group does not admit the
    // function's.
    let endpoint_sg = security_group(&b, "secrets-endpoint").await;
    let sm = b
        .ec2
        .create_vpc_endpoint()
        .vpc_id(&b.vpc)
        .vpc_endpoint_type(VpcEndpointType::Interface)
        .service_name("com.amazonaws.eu-west-1.secretsmanager")
        .subnet_ids(&b.private_subnets[0])
        .security_group_ids(&endpoint_sg)
        .private_dns_enabled(true)
        .send()
        .await
        .unwrap();
    let sm = sm
        .vpc_endpoint()
        .unwrap()
        .vpc_endpoint_id()
        .unwrap()
        .to_string();
    // Without --lambda, doctor finds the VPC's functions itself.
    let mut found = findings(&emu, &["--vpc", &b.vpc]);
    found.sort();
    let mut expected = vec![
        format!("endpoint_missing_az {sm}"),
        // Created without a policy: AWS's default lets anyone use it for anything.
        format!("endpoint_policy_open {sm}"),
        "internet_unreachable lost".to_string(),
        "secret_unreachable lost".to_string(),
        "wildcard_role lost-admin".to_string(),
    ];
    expected.extend(region_advice.iter().cloned());
    expected.sort();
    assert_eq!(found, expected);
    // The secret's "no" names the hop: the endpoint's security group, and its fix.
    let out = natctl(&emu, &["doctor", "--vpc", &b.vpc, "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "secret_unreachable")
        .unwrap()
        .clone();
    let problem = secret["problem"].as_str().unwrap();
    assert!(problem.contains(&endpoint_sg), "{secret}");
    assert!(
        secret["fix"].as_str().unwrap().contains(&lambda_sg),
        "{secret}"
    );
    assert_eq!(v["answers"][0]["secret"]["ok"], false, "{v}");
    // Unknown VPC or function: bad input, named.
    let out = natctl(&emu, &["doctor", "--vpc", "vpc-0000000000000dead"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("vpc-0000000000000dead"));
    let out = natctl(&emu, &["doctor", "--vpc", &b.vpc, "--lambda", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[tokio::test]
async fn a_stack_wires_one_function_and_refuses_a_second() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    application(&emu, &w);
    lambda_role(&emu, "other-original", None);
    function(&emu, "other", "other-original", None);
    let setup = |f: &'static str| {
        vec![
            "setup", "--env", "dev", "--vpc", &w.vpc, "--name", "one", "--ami", IMAGE, "--lambda",
            f,
        ]
    };
    let out = natctl(&emu, &setup("app"));
    assert!(out.status.success(), "{}", text(&out));
    let before = snapshot(&emu, &w.vpc);
    let out = natctl(&emu, &setup("other"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already wires Lambda function app") && err.contains("other"),
        "{err}"
    );
    assert_eq!(snapshot(&emu, &w.vpc), before, "nothing changed");
    // Teardown restores the function the stack wires, and leaves the other as it was.
    let out = natctl(&emu, &["teardown", "--name", "one"]);
    assert!(out.status.success(), "{}", text(&out));
    let f = emu.aws(&["lambda", "get-function", "--function-name", "other"]);
    assert_eq!(
        f["Configuration"]["Role"],
        "arn:aws:iam::123456789012:role/other-original"
    );
    let f = emu.aws(&["lambda", "get-function", "--function-name", "app"]);
    assert_eq!(
        f["Configuration"]["Role"],
        "arn:aws:iam::123456789012:role/app-original"
    );
}

#[tokio::test]
async fn a_private_dns_endpoint_needs_the_vpc_dns_attributes() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    application(&emu, &w);
    emu.aws(&[
        "ec2",
        "modify-vpc-attribute",
        "--vpc-id",
        &w.vpc,
        "--no-enable-dns-hostnames",
    ]);
    let before = snapshot(&emu, &w.vpc);
    let out = natctl(
        &emu,
        &[
            "setup", "--env", "dev", "--vpc", &w.vpc, "--name", "dns", "--ami", IMAGE, "--lambda",
            "app", "--secret", "app/db",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&w.vpc) && err.contains("enableDnsHostnames"),
        "{err}"
    );
    assert_eq!(snapshot(&emu, &w.vpc), before, "nothing created");
}

#[tokio::test]
async fn by_default_the_endpoint_serves_the_whole_vpc_and_an_existing_one_is_joined() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    application(&emu, &w);
    // Someone already has a Secrets Manager endpoint with private DNS in this VPC.
    let theirs_sg = emu.aws(&[
        "ec2",
        "create-security-group",
        "--group-name",
        "theirs",
        "--description",
        "x",
        "--vpc-id",
        &w.vpc,
    ])["GroupId"]
        .as_str()
        .unwrap()
        .to_string();
    let theirs = emu.aws(&[
        "ec2",
        "create-vpc-endpoint",
        "--vpc-id",
        &w.vpc,
        "--vpc-endpoint-type",
        "Interface",
        "--service-name",
        "com.amazonaws.eu-west-1.secretsmanager",
        "--subnet-ids",
        &w.private_subnets[0],
        "--security-group-ids",
        &theirs_sg,
        "--private-dns-enabled",
    ])["VpcEndpoint"]["VpcEndpointId"]
        .as_str()
        .unwrap()
        .to_string();
    let before = snapshot(&emu, &w.vpc);
    let setup = [
        "setup", "--env", "dev", "--vpc", &w.vpc, "--name", "vpcwide", "--ami", IMAGE, "--lambda",
        "app", "--secret", "app/db",
    ];
    let out = natctl(&emu, &setup);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("all keep Secrets Manager"),
        "{}",
        text(&out)
    );
    // SecretsManagerSG admits HTTPS from the VPC's CIDR.
    let sm_sg = group(&emu, "natd-vpcwide-secretsmanager");
    assert_eq!(
        ingress(&sm_sg),
        vec![(
            "tcp".into(),
            443,
            443,
            vec![],
            vec!["10.20.0.0/16".to_string()]
        )]
    );
    // No second endpoint: theirs carries SecretsManagerSG now, next to their own group.
    let filter = format!("Name=vpc-id,Values={}", w.vpc);
    let e = emu.aws(&["ec2", "describe-vpc-endpoints", "--filters", &filter]);
    let e = e["VpcEndpoints"].as_array().unwrap();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["VpcEndpointId"], theirs.as_str());
    let groups: Vec<&str> = e[0]["Groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["GroupId"].as_str().unwrap())
        .collect();
    assert!(
        groups.contains(&theirs_sg.as_str())
            && groups.contains(&sm_sg["GroupId"].as_str().unwrap()),
        "{groups:?}"
    );
    let again = natctl(&emu, &setup);
    assert_eq!(
        stdout(&again).trim(),
        "No changes necessary.",
        "{}",
        text(&again)
    );
    // Teardown: their endpoint stays, as it was.
    let out = natctl(&emu, &["teardown", "--name", "vpcwide"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(snapshot(&emu, &w.vpc), before);
}

#[tokio::test]
async fn a_secret_under_a_customer_managed_key_gets_decrypt_through_secrets_manager_only() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    application(&emu, &w);
    let key = "1234abcd-12ab-34cd-56ef-1234567890ab";
    let secret = emu.aws(&[
        "secretsmanager",
        "create-secret",
        "--name",
        "app/kms",
        "--kms-key-id",
        key,
        "--secret-string",
        "{}",
    ])["ARN"]
        .as_str()
        .unwrap()
        .to_string();
    let out = natctl(
        &emu,
        &[
            "setup", "--env", "dev", "--vpc", &w.vpc, "--name", "kms", "--ami", IMAGE, "--lambda",
            "app", "--secret", "app/kms",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let p = emu.aws(&[
        "iam",
        "get-role-policy",
        "--role-name",
        "natd-kms-lambda",
        "--policy-name",
        "natd-kms-lambda",
    ]);
    let kms: Vec<&serde_json::Value> = p["PolicyDocument"]["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Action"] == "kms:Decrypt")
        .collect();
    assert_eq!(kms.len(), 1, "{p}");
    assert!(
        kms[0]["Resource"]
            .as_str()
            .unwrap()
            .ends_with(&format!("key/{key}"))
    );
    assert_eq!(
        kms[0]["Condition"]["StringEquals"]["kms:EncryptionContext:SecretARN"],
        secret.as_str()
    );
}

/// The IAM condition value `key` of statement `s` under `op` (a string or a list).
fn condition<'a>(s: &'a serde_json::Value, op: &str, key: &str) -> Vec<&'a str> {
    match &s["Condition"][op][key] {
        serde_json::Value::String(x) => vec![x.as_str()],
        serde_json::Value::Array(xs) => xs.iter().filter_map(|x| x.as_str()).collect(),
        _ => vec![],
    }
}

#[tokio::test]
async fn defense_in_depth_is_built_read_back_converges_and_goes_with_teardown() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    let secret_arn = application(&emu, &w);
    let before = snapshot(&emu, &w.vpc);
    let role_arn = "arn:aws:iam::123456789012:role/natd-app-lambda";

    // Bad values are refused before anything changes, each named.
    for (args, needle) in [
        (vec!["--flow-logs", "kinesis"], "kinesis"),
        (vec!["--flow-logs", "s3://Not_A_Bucket"], "Not_A_Bucket"),
        (
            vec!["--flow-logs", "cloudwatch", "--flow-logs-retention", "31"],
            "31",
        ),
        (vec!["--secret-policy", "everyone"], "everyone"),
    ] {
        let calls = emu.calls().len();
        let mut cmd = vec![
            "setup", "--env", "dev", "--vpc", &w.vpc, "--name", "app", "--ami", IMAGE, "--lambda",
            "app", "--secret", "app/db",
        ];
        cmd.extend(args.iter().copied());
        let out = natctl(&emu, &cmd);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out)
        );
        assert!(
            !emu.calls()[calls..].iter().any(|c| is_mutating(c)),
            "{args:?} changed something"
        );
    }
    let out = natctl(
        &emu,
        &[
            "setup",
            "--env",
            "dev",
            "--vpc",
            &w.vpc,
            "--name",
            "app",
            "--ami",
            IMAGE,
            "--lambda",
            "app",
            "--secret-policy",
            "role",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--secret"));

    let setup = [
        "setup",
        "--env",
        "dev",
        "--vpc",
        &w.vpc,
        "--name",
        "app",
        "--ami",
        IMAGE,
        "--lambda",
        "app",
        "--secret",
        "app/db",
        "--db-instance",
        "app-db",
        "--secret-policy",
        "endpoint",
        "--flow-logs",
        "cloudwatch",
        "--flow-logs-retention",
        "30",
    ];
    let out = natctl(&emu, &setup);
    assert!(out.status.success(), "{}", text(&out));

    // The endpoint's policy: GetSecretValue on this secret, for the stack's role only.
    let filter = format!("Name=vpc-id,Values={}", w.vpc);
    let e = emu.aws(&["ec2", "describe-vpc-endpoints", "--filters", &filter]);
    let e = &e["VpcEndpoints"][0];
    let endpoint = e["VpcEndpointId"].as_str().unwrap().to_string();
    let policy: serde_json::Value =
        serde_json::from_str(e["PolicyDocument"].as_str().unwrap()).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 1, "{policy}");
    assert_eq!(statements[0]["Effect"], "Allow");
    assert_eq!(statements[0]["Action"], "secretsmanager:GetSecretValue");
    assert_eq!(statements[0]["Resource"], secret_arn.as_str());
    assert_eq!(
        condition(&statements[0], "ArnEquals", "aws:PrincipalArn"),
        vec![role_arn]
    );

    // The secret's policy: only the role reads it, and only through that endpoint; it
    // denies nothing but GetSecretValue, so administrators keep managing the secret.
    let p = emu.aws(&[
        "secretsmanager",
        "get-resource-policy",
        "--secret-id",
        &secret_arn,
    ]);
    let policy: serde_json::Value =
        serde_json::from_str(p["ResourcePolicy"].as_str().unwrap()).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 2, "{policy}");
    for s in statements {
        assert_eq!(s["Effect"], "Deny", "{s}");
        assert_eq!(s["Action"], "secretsmanager:GetSecretValue", "{s}");
    }
    assert_eq!(
        condition(&statements[0], "ArnNotEquals", "aws:PrincipalArn"),
        vec![role_arn]
    );
    assert_eq!(
        condition(&statements[1], "StringNotEquals", "aws:SourceVpce"),
        vec![endpoint.as_str()]
    );

    // Flow logs: the VPC, all traffic, to the stack's log group kept 30 days, by a
    // role that may write to that group only and that only VPC Flow Logs assumes.
    let vpc_filter = format!("Name=resource-id,Values={}", w.vpc);
    let fl = emu.aws(&["ec2", "describe-flow-logs", "--filter", &vpc_filter]);
    let fl = fl["FlowLogs"].as_array().unwrap();
    assert_eq!(fl.len(), 1, "{fl:?}");
    assert_eq!(fl[0]["TrafficType"], "ALL");
    assert_eq!(fl[0]["LogGroupName"], "/natd/app/vpc-flow-logs");
    assert_eq!(
        fl[0]["DeliverLogsPermissionArn"],
        "arn:aws:iam::123456789012:role/natd-app-flow-logs"
    );
    let groups = emu.aws(&[
        "logs",
        "describe-log-groups",
        "--log-group-name-prefix",
        "/natd/app/",
    ]);
    assert_eq!(groups["logGroups"][0]["retentionInDays"], 30, "{groups}");
    let rp = emu.aws(&[
        "iam",
        "get-role-policy",
        "--role-name",
        "natd-app-flow-logs",
        "--policy-name",
        "natd-app-flow-logs",
    ]);
    for s in rp["PolicyDocument"]["Statement"].as_array().unwrap() {
        // DescribeLogGroups takes no resource (Service Authorization Reference): it is
        // the one action granted on "*".
        if s["Resource"] == "*" {
            assert_eq!(
                s["Action"],
                serde_json::json!(["logs:DescribeLogGroups"]),
                "{s}"
            );
            continue;
        }
        for r in s["Resource"].as_array().unwrap() {
            assert!(
                r.as_str()
                    .unwrap()
                    .contains(":log-group:/natd/app/vpc-flow-logs"),
                "{s}"
            );
        }
    }
    let role = emu.aws(&["iam", "get-role", "--role-name", "natd-app-flow-logs"]);
    assert_eq!(
        role["Role"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["Service"],
        "vpc-flow-logs.amazonaws.com"
    );

    // Again: nothing to change, no mutating call.
    let before_calls = emu.calls().len();
    let again = natctl(&emu, &setup);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        stdout(&again).trim(),
        "No changes necessary.",
        "{}",
        text(&again)
    );
    let calls = emu.calls();
    let mutating: Vec<&String> = calls[before_calls..]
        .iter()
        .filter(|c| is_mutating(c))
        .collect();
    assert!(mutating.is_empty(), "{mutating:?}");
    // Without the flags, setup leaves both policies and the flow logs as they are.
    let bare = [
        "setup",
        "--env",
        "dev",
        "--vpc",
        &w.vpc,
        "--name",
        "app",
        "--ami",
        IMAGE,
        "--lambda",
        "app",
        "--secret",
        "app/db",
        "--db-instance",
        "app-db",
    ];
    let out = natctl(&emu, &bare);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out).trim(),
        "No changes necessary.",
        "{}",
        text(&out)
    );

    // doctor: nothing but the region's advice; the endpoint is not open, the secret has
    // its policy, the VPC its flow logs.
    let d = natctl(
        &emu,
        &[
            "doctor", "--vpc", &w.vpc, "--lambda", "app", "--output", "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap();
    let checks: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    for absent in [
        "endpoint_policy_open",
        "secret_policy_missing",
        "flow_logs_off",
        "secret_denied",
    ] {
        assert!(!checks.contains(&absent), "{absent}: {v}");
    }
    assert_eq!(v["answers"][0]["secret"]["ok"], true, "{v}");
    assert_eq!(d.status.code(), Some(0), "{}", text(&d));

    // Someone else's policy on a secret is never replaced.
    emu.aws(&[
        "secretsmanager",
        "create-secret",
        "--name",
        "other/db",
        "--secret-string",
        "x",
    ]);
    emu.aws(&[
        "secretsmanager",
        "put-resource-policy",
        "--secret-id",
        "other/db",
        "--resource-policy",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":"*","Action":"secretsmanager:DeleteSecret","Resource":"*"}]}"#,
    ]);
    let calls = emu.calls().len();
    let out = natctl(
        &emu,
        &[
            "setup",
            "--env",
            "dev",
            "--vpc",
            &w.vpc,
            "--name",
            "app",
            "--ami",
            IMAGE,
            "--lambda",
            "app",
            "--secret",
            "other/db",
            "--secret-policy",
            "role",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already has a resource policy"),
        "{}",
        text(&out)
    );
    assert!(!emu.calls()[calls..].iter().any(|c| is_mutating(c)));

    // Teardown: the secret's policy, the flow log, its group and role go with the rest.
    let out = natctl(&emu, &["teardown", "--name", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    let p = emu.aws(&[
        "secretsmanager",
        "get-resource-policy",
        "--secret-id",
        &secret_arn,
    ]);
    assert!(p.get("ResourcePolicy").is_none(), "{p}");
    let d = emu.aws(&[
        "secretsmanager",
        "describe-secret",
        "--secret-id",
        &secret_arn,
    ]);
    assert!(!d.to_string().contains("natd:secret-policy"), "{d}");
    let fl = emu.aws(&["ec2", "describe-flow-logs", "--filter", &vpc_filter]);
    assert_eq!(fl["FlowLogs"], serde_json::json!([]));
    let groups = emu.aws(&[
        "logs",
        "describe-log-groups",
        "--log-group-name-prefix",
        "/natd/app/",
    ]);
    assert_eq!(groups["logGroups"], serde_json::json!([]));
    let roles = emu.aws(&["iam", "list-roles"]);
    assert!(!roles.to_string().contains("natd-app-flow-logs"));
    assert_eq!(snapshot(&emu, &w.vpc), before);
}
