//! The Lambda wiring of `natctl setup` (LambdaSG, DatabaseSG, SecretsManagerSG, the
//! Secrets Manager endpoint, the execution role, the function's VPC config) on a
//! function, secret and DB instance created in the emulator, checked with the AWS CLI.

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::cli::{natctl, snapshot, stdout};
use natd_tests::emulator::{Emulator, is_mutating};
use natd_tests::world::{IMAGE, World, text};

/// A function (with its own role, outside any VPC), a secret, and a PostgreSQL
/// instance in the VPC's private subnets. Returns the secret's ARN.
fn application(emu: &Emulator, w: &World) -> String {
    emu.aws(&[
        "iam",
        "create-role",
        "--role-name",
        "app-original",
        "--assume-role-policy-document",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("f.zip");
    let made = std::process::Command::new(natd_tests::python())
        .args([
            "-c",
            "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], 'w'); z.writestr('index.py', 'def handler(e, c):\\n    return 1\\n'); z.close()",
        ])
        .arg(&zip)
        .status()
        .unwrap();
    assert!(made.success());
    emu.aws(&[
        "lambda",
        "create-function",
        "--function-name",
        "app",
        "--runtime",
        "python3.12",
        "--handler",
        "index.handler",
        "--role",
        "arn:aws:iam::123456789012:role/app-original",
        "--zip-file",
        &format!("fileb://{}", zip.display()),
    ]);
    let secret = emu.aws(&[
        "secretsmanager",
        "create-secret",
        "--name",
        "app/db",
        "--secret-string",
        "{\"password\":\"x\"}",
    ]);
    let subnets = w.private_subnets.join(" ");
    let mut args = vec![
        "rds",
        "create-db-subnet-group",
        "--db-subnet-group-name",
        "app-db",
        "--db-subnet-group-description",
        "app",
        "--subnet-ids",
    ];
    args.extend(subnets.split(' '));
    emu.aws(&args);
    emu.aws(&[
        "rds",
        "create-db-instance",
        "--db-instance-identifier",
        "app-db",
        "--db-instance-class",
        "db.t4g.micro",
        "--engine",
        "postgres",
        "--master-username",
        "app",
        "--master-user-password",
        "not-a-real-password-1",
        "--allocated-storage",
        "20",
        "--db-subnet-group-name",
        "app-db",
    ]);
    secret["ARN"].as_str().unwrap().to_string()
}

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
    let emu = Emulator::start();
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
    ];
    let out = natctl(&emu, &setup);
    assert!(out.status.success(), "{}", text(&out));

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

    // doctor finds nothing wrong with what natctl built (no NAT instance runs here, so
    // only the wiring is judged: the route check needs natd).
    let d = natctl(
        &emu,
        &[
            "doctor", "--vpc", &w.vpc, "--lambda", "app", "--output", "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap();
    let findings: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .filter(|c| *c != "no_egress")
        .collect();
    assert!(findings.is_empty(), "{v}");

    // Teardown: the function has its role and VPC config back; the VPC is as before.
    let out = natctl(&emu, &["teardown", "--name", "app"]);
    assert!(out.status.success(), "{}", text(&out));
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
