//! The application a VPC function story needs, made with the AWS CLI as a user's
//! account would have it: a role Lambda can assume, a function, a secret, and a
//! PostgreSQL instance.

use crate::emulator::Emulator;
use crate::world::World;

/// A role Lambda can assume, with `policy` inline when given.
pub fn lambda_role(emu: &Emulator, name: &str, policy: Option<&str>) {
    emu.aws(&[
        "iam",
        "create-role",
        "--role-name",
        name,
        "--assume-role-policy-document",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
    ]);
    if let Some(p) = policy {
        emu.aws(&[
            "iam",
            "put-role-policy",
            "--role-name",
            name,
            "--policy-name",
            name,
            "--policy-document",
            p,
        ]);
    }
}

/// A Python function `name` running as `role`, in a VPC when `vpc_config` (the AWS
/// CLI's shorthand) is given.
pub fn function(emu: &Emulator, name: &str, role: &str, vpc_config: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("f.zip");
    let made = std::process::Command::new(crate::python())
        .args([
            "-c",
            "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], 'w'); z.writestr('index.py', 'def handler(e, c):\\n    return 1\\n'); z.close()",
        ])
        .arg(&zip)
        .status()
        .unwrap();
    assert!(made.success());
    let role = format!("arn:aws:iam::123456789012:role/{role}");
    let zip = format!("fileb://{}", zip.display());
    let mut args = vec![
        "lambda",
        "create-function",
        "--function-name",
        name,
        "--runtime",
        "python3.12",
        "--handler",
        "index.handler",
        "--role",
        &role,
        "--zip-file",
        &zip,
    ];
    if let Some(v) = vpc_config {
        args.extend(["--vpc-config", v]);
    }
    emu.aws(&args);
}

/// A function (with its own role, outside any VPC), a secret, and a PostgreSQL
/// instance in the VPC's private subnets. Returns the secret's ARN.
pub fn application(emu: &Emulator, w: &World) -> String {
    lambda_role(emu, "app-original", None);
    function(emu, "app", "app-original", None);
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

/// What `natctl setup` needs to wire [`application`]'s function: its name, secret and
/// database, as setup's arguments.
pub const WIRING: [&str; 6] = [
    "--lambda",
    "app",
    "--secret",
    "app/db",
    "--db-instance",
    "app-db",
];

/// One try at putting [`application`]'s function into `subnets` with `groups`: false
/// while Lambda is still busy with its last update (ResourceConflictException), so
/// callers retry with their own patience.
pub fn put_in_vpc(emu: &Emulator, subnets: &[&str], groups: &[&str]) -> bool {
    let config = format!(
        "SubnetIds={},SecurityGroupIds={}",
        subnets.join(","),
        groups.join(",")
    );
    emu.aws_output(&[
        "lambda",
        "update-function-configuration",
        "--function-name",
        "app",
        "--vpc-config",
        &config,
    ])
    .status
    .success()
}
