//! The diagnosis as a table: a VPC built right (prod: one NAT gateway per AZ, the
//! Lambda wiring), then one mistake at a time, each with what doctor must say.

use super::net::{AclEntry, Peer, Proto, Route, Rule};
use super::*;
use serde_json::json;

const SECRET: &str = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-AbCd";
const ROLE: &str = "arn:aws:iam::123456789012:role/app-role";

/// The endpoint policy natctl writes by default: that secret, that role.
fn stack_endpoint_policy() -> Vec<serde_json::Value> {
    json!([{"Sid": "StackSecretOnly", "Effect": "Allow", "Principal": "*",
            "Action": "secretsmanager:GetSecretValue", "Resource": SECRET,
            "Condition": {"ArnEquals": {"aws:PrincipalArn": ROLE}}}])
    .as_array()
    .expect("list")
    .clone()
}

/// The secret policy natctl writes with --secret-policy role.
fn only_role_reads() -> Vec<serde_json::Value> {
    json!([{"Sid": "OnlyTheExecutionRoleReads", "Effect": "Deny", "Principal": "*",
            "Action": "secretsmanager:GetSecretValue", "Resource": "*",
            "Condition": {"ArnNotEquals": {"aws:PrincipalArn": [ROLE]}}}])
    .as_array()
    .expect("list")
    .clone()
}

fn net(s: &str) -> IpNet {
    s.parse().expect("cidr")
}

fn route(dest: &str, target: &str) -> Route {
    Route {
        dest: Some(net(dest)),
        target: target.into(),
        state: "active".into(),
    }
}

fn all_from(c: &str) -> Rule {
    Rule {
        proto: Proto::All,
        ports: (0, 65535),
        peer: Peer::Cidr(net(c)),
    }
}

fn tcp(port: u16, peer: Peer) -> Rule {
    Rule {
        proto: Proto::Tcp,
        ports: (port, port),
        peer,
    }
}

fn group(name: &str, ingress: Vec<Rule>) -> Group {
    Group {
        name: name.into(),
        ingress,
        egress: vec![all_from("0.0.0.0/0")],
    }
}

fn acl_all() -> Vec<AclEntry> {
    [false, true]
        .into_iter()
        .map(|egress| AclEntry {
            number: 100,
            egress,
            proto: Proto::All,
            ports: None,
            cidr: net("0.0.0.0/0"),
            allow: true,
        })
        .collect()
}

fn good_policy() -> Vec<serde_json::Value> {
    json!([
        {"Effect": "Allow", "Action": ["ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces",
          "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"],
         "Resource": "*"},
        {"Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": ["arn:aws:logs:eu-west-1:123456789012:log-group:/aws/lambda/app",
                      "arn:aws:logs:eu-west-1:123456789012:log-group:/aws/lambda/app:*"]},
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": SECRET}
    ])
    .as_array()
    .expect("list")
    .clone()
}

/// A VPC built right.
fn good() -> Facts {
    let subnet = |az: &str, cidr: &str, table: &str| Subnet {
        az: az.into(),
        cidr: net(cidr),
        table: Some(table.into()),
        acl: Some("acl-default".into()),
        ipv6: None,
    };
    let local = route("10.0.0.0/16", "local");
    Facts {
        vpc: "vpc-1".into(),
        cidrs: vec![net("10.0.0.0/16")],
        dns_support: true,
        dns_hostnames: true,
        subnets: [
            ("pub-a", subnet("a", "10.0.0.0/24", "rtb-pub")),
            ("pub-b", subnet("b", "10.0.1.0/24", "rtb-pub")),
            ("priv-a", subnet("a", "10.0.10.0/24", "rtb-a")),
            ("priv-b", subnet("b", "10.0.11.0/24", "rtb-b")),
            ("db-a", subnet("a", "10.0.20.0/24", "rtb-a")),
            ("db-b", subnet("b", "10.0.21.0/24", "rtb-b")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        tables: [
            ("rtb-pub", vec![local.clone(), route("0.0.0.0/0", "igw-1")]),
            ("rtb-a", vec![local.clone(), route("0.0.0.0/0", "nat-a")]),
            ("rtb-b", vec![local, route("0.0.0.0/0", "nat-b")]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        igws: ["igw-1".to_string()].into(),
        gateways: [("nat-a", "pub-a"), ("nat-b", "pub-b")]
            .into_iter()
            .map(|(id, s)| {
                (
                    id.to_string(),
                    Gateway {
                        subnet: s.into(),
                        regional: false,
                        state: "available".into(),
                        public: true,
                    },
                )
            })
            .collect(),
        nat_hosts: BTreeMap::new(),
        endpoints: vec![Endpoint {
            id: "vpce-sm".into(),
            service: "com.amazonaws.eu-west-1.secretsmanager".into(),
            private_dns: true,
            groups: vec!["sg-sm".into()],
            subnets: vec!["priv-a".into(), "priv-b".into()],
            policy: Some(stack_endpoint_policy()),
            dns_ipv6_only: false,
        }],
        groups: [
            ("sg-lambda", group("app-lambda", vec![])),
            (
                "sg-db",
                group(
                    "app-database",
                    vec![tcp(5432, Peer::Group("sg-lambda".into()))],
                ),
            ),
            (
                "sg-sm",
                group(
                    "app-secretsmanager",
                    vec![tcp(443, Peer::Cidr(net("10.0.0.0/16")))],
                ),
            ),
            ("sg-nat", group("app-nat", vec![all_from("10.0.0.0/16")])),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        acls: [("acl-default".to_string(), acl_all())].into(),
        databases: vec![Database {
            id: "db-1".into(),
            port: 5432,
            groups: vec!["sg-db".into()],
            subnets: vec!["db-a".into(), "db-b".into()],
            az: Some("a".into()),
            public: false,
            backup_days: 7,
            multi_az: true,
            max_connections: Some((1722, "PostgreSQL's default on db.r6g.large".into())),
            latest_restorable: Some("2026-12-07T10:00:00Z".into()),
        }],
        functions: vec![Function {
            name: "app".into(),
            subnets: vec!["priv-a".into(), "priv-b".into()],
            groups: vec!["sg-lambda".into()],
            role: "app-role".into(),
            role_arn: ROLE.into(),
            statements: good_policy(),
            boundary: None,
            concurrency: Some((100, "its reserved concurrency".into())),
            ipv6: false,
        }],
        secrets: [(
            SECRET.to_string(),
            Secret {
                arn: SECRET.into(),
                rotation: true,
                last_rotated: Some("2026-11-01T00:00:00Z".into()),
                policy: only_role_reads(),
            },
        )]
        .into(),
        natd_pending: BTreeMap::new(),
        pairs: Vec::new(),
        stack_alarms: Vec::new(),
        region: RegionFacts {
            flow_logs: Some(true),
            trail_logging: Some(true),
            guardduty: Some(true),
            enis: Some((40, 5000)),
        },
    }
}

/// The dev shape: one NAT instance in pub-a for both private tables.
fn dev() -> Facts {
    let mut f = good();
    for t in ["rtb-a", "rtb-b"] {
        f.tables.get_mut(t).expect("table")[1].target = "i-nat".into();
    }
    f.gateways.clear();
    f.nat_hosts.insert(
        "i-nat".into(),
        NatHost {
            eni: "eni-nat".into(),
            subnet: "pub-a".into(),
            source_dest_check: false,
            groups: vec!["sg-nat".into()],
            public_ip: true,
        },
    );
    f
}

/// The good shape, dual-stack: the function allowed IPv6, its subnets with IPv6
/// blocks, `::/0` to an egress-only gateway, LambdaSG and the ACL letting IPv6 out.
fn dual_stack() -> Facts {
    let mut f = good();
    for (s, block) in [
        ("priv-a", "2600:1f18:1:a00::/64"),
        ("priv-b", "2600:1f18:1:a01::/64"),
    ] {
        f.subnets.get_mut(s).expect("subnet").ipv6 = Some(block.parse().expect("v6"));
    }
    for t in ["rtb-a", "rtb-b"] {
        f.tables
            .get_mut(t)
            .expect("table")
            .push(route("::/0", "eigw-1"));
    }
    f.groups
        .get_mut("sg-lambda")
        .expect("group")
        .egress
        .push(all_from("::/0"));
    for egress in [false, true] {
        f.acls.get_mut("acl-default").expect("acl").push(AclEntry {
            number: 101,
            egress,
            proto: Proto::All,
            ports: None,
            cidr: net("::/0"),
            allow: true,
        });
    }
    f.functions[0].ipv6 = true;
    f
}

fn checks(f: &Facts) -> BTreeSet<(Severity, &'static str)> {
    diagnose(f)
        .findings
        .iter()
        .map(|x| (x.severity, x.check))
        .collect()
}

fn acl_entry(
    number: i32,
    egress: bool,
    ports: Option<(u16, u16)>,
    cidr: &str,
    allow: bool,
) -> AclEntry {
    AclEntry {
        number,
        egress,
        proto: Proto::Tcp,
        ports,
        cidr: net(cidr),
        allow,
    }
}

type Mutation = Box<dyn Fn(&mut Facts)>;

/// (name, the shape it starts from, the mistake, what doctor must find).
type Case = (
    &'static str,
    fn() -> Facts,
    Mutation,
    Vec<(Severity, &'static str)>,
);

#[test]
fn the_good_shapes_have_no_findings_and_every_answer_is_yes() {
    for (name, f) in [
        ("prod", good()),
        ("dev", dev()),
        ("dual-stack", dual_stack()),
    ] {
        let d = diagnose(&f);
        assert_eq!(d.findings, vec![], "{name}");
        let a = &d.answers[0];
        let secret = a.secret.as_ref().expect("asked");
        assert!(secret.ok && a.internet.ok, "{name}: {a:?}");
        assert!(a.databases["db-1"].ok, "{name}: {a:?}");
        assert_eq!(
            secret.via,
            vec!["endpoint vpce-sm in priv-a", "endpoint vpce-sm in priv-b"]
        );
    }
    let d = diagnose(&dual_stack());
    let v6 = d.answers[0]
        .ipv6
        .as_ref()
        .expect("asked of a dual-stack function");
    assert!(v6.ok, "{v6:?}");
    assert_eq!(v6.via, vec!["egress-only internet gateway eigw-1"]);
    assert_eq!(
        diagnose(&good()).answers[0].ipv6,
        None,
        "not asked of IPv4 only"
    );
    // Without functions, databases or endpoints: still nothing.
    let mut bare = good();
    bare.functions.clear();
    bare.databases.clear();
    bare.endpoints.clear();
    bare.secrets.clear();
    assert_eq!(diagnose(&bare).findings, vec![]);
}

#[test]
fn each_mistake_is_found_with_its_severity() {
    use Severity::{Advice, Breaks, Risk};
    let cases: Vec<Case> = vec![
        // Placement and routing.
        (
            "function in public subnets",
            good,
            Box::new(|f| {
                f.tables.get_mut("rtb-a").expect("t")[1].target = "igw-1".into();
            }),
            vec![
                (Breaks, "internet_unreachable"),
                (Risk, "database_in_public_subnet"),
            ],
        ),
        (
            "no default route",
            good,
            Box::new(|f| {
                f.tables.get_mut("rtb-b").expect("t").pop();
            }),
            vec![(Breaks, "internet_unreachable")],
        ),
        (
            "blackhole",
            good,
            Box::new(|f| {
                f.tables.get_mut("rtb-b").expect("t")[1].state = "blackhole".into();
            }),
            vec![
                (Breaks, "internet_unreachable"),
                (Breaks, "blackhole_route"),
            ],
        ),
        (
            "gateway failed",
            good,
            Box::new(|f| {
                f.gateways.get_mut("nat-a").expect("g").state = "failed".into();
            }),
            vec![
                (Breaks, "internet_unreachable"),
                (Breaks, "nat_gateway_not_available"),
            ],
        ),
        (
            "private gateway",
            good,
            Box::new(|f| {
                f.gateways.get_mut("nat-b").expect("g").public = false;
            }),
            vec![
                (Breaks, "internet_unreachable"),
                (Breaks, "nat_without_internet"),
            ],
        ),
        (
            "gateways in a subnet without internet",
            good,
            Box::new(|f| {
                f.tables.get_mut("rtb-pub").expect("t").pop();
            }),
            vec![
                (Breaks, "internet_unreachable"),
                (Breaks, "nat_without_internet"),
            ],
        ),
        (
            "internet gateway detached",
            good,
            Box::new(|f| {
                f.igws.clear();
            }),
            vec![
                (Breaks, "internet_unreachable"),
                (Breaks, "nat_without_internet"),
            ],
        ),
        (
            "one regional gateway for both AZs",
            good,
            Box::new(|f| {
                regional(f);
            }),
            vec![],
        ),
        (
            "regional gateway, internet gateway detached",
            good,
            Box::new(|f| {
                regional(f);
                f.igws.clear();
            }),
            vec![
                (Breaks, "internet_unreachable"),
                (Breaks, "nat_without_internet"),
            ],
        ),
        (
            "AZ b routed through AZ a's gateway",
            good,
            Box::new(|f| {
                f.tables.get_mut("rtb-b").expect("t")[1].target = "nat-a".into();
            }),
            vec![(Risk, "one_nat_for_several_azs")],
        ),
        // The NAT instance.
        (
            "source/dest check on",
            dev,
            Box::new(|f| {
                f.nat_hosts.get_mut("i-nat").expect("h").source_dest_check = true;
            }),
            vec![
                (Breaks, "internet_unreachable"),
                (Breaks, "source_dest_check_on"),
            ],
        ),
        (
            "a new stack's natd has not taken the tables yet",
            dev,
            Box::new(|f| {
                f.tables.get_mut("rtb-a").expect("t").pop();
                f.tables.get_mut("rtb-b").expect("t")[1].state = "blackhole".into();
                f.natd_pending.insert("rtb-a".into(), "i-nat".into());
                f.natd_pending.insert("rtb-b".into(), "i-nat".into());
            }),
            vec![(Advice, "natd_pending")],
        ),
        (
            "only one of them",
            dev,
            Box::new(|f| {
                f.tables.get_mut("rtb-a").expect("t").pop();
                f.tables.get_mut("rtb-b").expect("t").pop();
                f.natd_pending.insert("rtb-a".into(), "i-nat".into());
            }),
            vec![(Advice, "natd_pending"), (Breaks, "internet_unreachable")],
        ),
        (
            "NAT instance group admits one subnet only",
            dev,
            Box::new(|f| {
                f.groups.get_mut("sg-nat").expect("g").ingress = vec![all_from("10.0.11.0/24")];
            }),
            vec![(Breaks, "internet_unreachable")],
        ),
        (
            "NAT instance group admits by port 80 only",
            dev,
            Box::new(|f| {
                f.groups.get_mut("sg-nat").expect("g").ingress =
                    vec![tcp(80, Peer::Cidr(net("10.0.0.0/16")))];
            }),
            vec![(Breaks, "internet_unreachable")],
        ),
        (
            "NAT instance without public address",
            dev,
            Box::new(|f| {
                f.nat_hosts.get_mut("i-nat").expect("h").public_ip = false;
            }),
            vec![
                (Breaks, "internet_unreachable"),
                (Breaks, "nat_without_public_ip"),
            ],
        ),
        (
            "NAT instance in a private subnet",
            dev,
            Box::new(|f| {
                f.nat_hosts.get_mut("i-nat").expect("h").subnet = "db-b".into();
            }),
            vec![
                (Breaks, "internet_unreachable"),
                (Breaks, "nat_without_internet"),
            ],
        ),
        // The function's own security group.
        (
            "egress to the VPC only",
            good,
            Box::new(|f| {
                f.groups.get_mut("sg-lambda").expect("g").egress = vec![all_from("10.0.0.0/16")];
            }),
            vec![(Breaks, "internet_unreachable")],
        ),
        (
            "no egress at all",
            good,
            Box::new(|f| {
                f.groups.get_mut("sg-lambda").expect("g").egress.clear();
            }),
            vec![
                (Breaks, "internet_unreachable"),
                (Breaks, "secret_unreachable"),
                (Breaks, "database_unreachable"),
            ],
        ),
        (
            "egress on IPv6 only",
            good,
            Box::new(|f| {
                f.groups.get_mut("sg-lambda").expect("g").egress = vec![all_from("::/0")];
            }),
            vec![
                (Breaks, "internet_unreachable"),
                (Breaks, "secret_unreachable"),
                (Breaks, "database_unreachable"),
            ],
        ),
        // The endpoint and DNS.
        (
            "endpoint group admits another group",
            good,
            Box::new(|f| {
                f.groups.get_mut("sg-sm").expect("g").ingress =
                    vec![tcp(443, Peer::Group("sg-other".into()))];
            }),
            vec![(Breaks, "secret_unreachable")],
        ),
        (
            "endpoint group admits one subnet",
            good,
            Box::new(|f| {
                f.groups.get_mut("sg-sm").expect("g").ingress =
                    vec![tcp(443, Peer::Cidr(net("10.0.10.0/24")))];
            }),
            vec![(Breaks, "secret_unreachable")],
        ),
        (
            "endpoint group admits port 80",
            good,
            Box::new(|f| {
                f.groups.get_mut("sg-sm").expect("g").ingress =
                    vec![tcp(80, Peer::Group("sg-lambda".into()))];
            }),
            vec![(Breaks, "secret_unreachable")],
        ),
        (
            "private DNS off, NAT there",
            good,
            Box::new(|f| {
                f.endpoints[0].private_dns = false;
            }),
            vec![
                (Risk, "endpoint_without_private_dns"),
                (Advice, "secret_through_nat"),
            ],
        ),
        (
            "private DNS off, no NAT",
            good,
            Box::new(|f| {
                f.endpoints[0].private_dns = false;
                f.tables.get_mut("rtb-a").expect("t").pop();
                f.tables.get_mut("rtb-b").expect("t").pop();
            }),
            vec![
                (Risk, "endpoint_without_private_dns"),
                (Breaks, "secret_unreachable"),
                (Breaks, "internet_unreachable"),
            ],
        ),
        (
            "DNS hostnames off",
            good,
            Box::new(|f| {
                f.dns_hostnames = false;
            }),
            vec![(Risk, "vpc_dns_off"), (Advice, "secret_through_nat")],
        ),
        (
            "DNS support off",
            good,
            Box::new(|f| {
                f.dns_support = false;
            }),
            vec![(Risk, "vpc_dns_off"), (Breaks, "secret_unreachable")],
        ),
        (
            "endpoint in one AZ",
            good,
            Box::new(|f| {
                f.endpoints[0].subnets = vec!["priv-a".into()];
            }),
            vec![(Risk, "endpoint_missing_az")],
        ),
        (
            "no endpoint",
            good,
            Box::new(|f| {
                f.endpoints.clear();
            }),
            vec![(Advice, "secret_through_nat")],
        ),
        (
            "no endpoint, no NAT",
            good,
            Box::new(|f| {
                f.endpoints.clear();
                f.tables.get_mut("rtb-a").expect("t").pop();
                f.tables.get_mut("rtb-b").expect("t").pop();
            }),
            vec![
                (Breaks, "secret_unreachable"),
                (Breaks, "internet_unreachable"),
            ],
        ),
        // Network ACLs.
        (
            "ACL on priv-b denies replies",
            good,
            Box::new(|f| {
                f.acls.insert(
                    "acl-b".into(),
                    vec![
                        acl_entry(100, true, None, "0.0.0.0/0", true),
                        acl_entry(100, false, Some((443, 443)), "0.0.0.0/0", true),
                    ],
                );
                f.subnets.get_mut("priv-b").expect("s").acl = Some("acl-b".into());
            }),
            vec![
                (Breaks, "internet_unreachable"),
                (Breaks, "database_unreachable"),
            ],
        ),
        (
            "ACL on the database subnets replies to 32768+ only",
            good,
            Box::new(|f| {
                f.acls.insert(
                    "acl-db".into(),
                    vec![
                        acl_entry(100, false, None, "0.0.0.0/0", true),
                        acl_entry(100, true, Some((32768, 65535)), "0.0.0.0/0", true),
                    ],
                );
                f.subnets.get_mut("db-a").expect("s").acl = Some("acl-db".into());
                f.subnets.get_mut("db-b").expect("s").acl = Some("acl-db".into());
            }),
            vec![(Breaks, "database_unreachable")],
        ),
        (
            "ACL denies the database port before allowing all",
            good,
            Box::new(|f| {
                f.acls.insert(
                    "acl-db".into(),
                    vec![
                        acl_entry(50, false, Some((5432, 5432)), "10.0.0.0/16", false),
                        acl_entry(100, false, None, "0.0.0.0/0", true),
                        acl_entry(100, true, None, "0.0.0.0/0", true),
                    ],
                );
                f.subnets.get_mut("db-a").expect("s").acl = Some("acl-db".into());
                f.subnets.get_mut("db-b").expect("s").acl = Some("acl-db".into());
            }),
            vec![(Breaks, "database_unreachable")],
        ),
        // The database.
        (
            "database group on the wrong port",
            good,
            Box::new(|f| {
                f.groups.get_mut("sg-db").expect("g").ingress =
                    vec![tcp(3306, Peer::Group("sg-lambda".into()))];
            }),
            vec![(Breaks, "database_unreachable")],
        ),
        (
            "database group admits another group only",
            good,
            Box::new(|f| {
                f.groups.get_mut("sg-db").expect("g").ingress =
                    vec![tcp(5432, Peer::Group("sg-nat".into()))];
            }),
            vec![(Breaks, "database_unreachable")],
        ),
        (
            "database open to the world",
            good,
            Box::new(|f| {
                f.groups
                    .get_mut("sg-db")
                    .expect("g")
                    .ingress
                    .push(tcp(5432, Peer::Cidr(net("0.0.0.0/0"))));
            }),
            vec![(Risk, "database_sg_open")],
        ),
        (
            "database open on IPv6",
            good,
            Box::new(|f| {
                f.groups
                    .get_mut("sg-db")
                    .expect("g")
                    .ingress
                    .push(tcp(5432, Peer::Cidr(net("::/0"))));
            }),
            vec![(Risk, "database_sg_open")],
        ),
        (
            "database open in two halves",
            good,
            Box::new(|f| {
                let g = f.groups.get_mut("sg-db").expect("g");
                g.ingress.push(Rule {
                    proto: Proto::Tcp,
                    ports: (0, 65535),
                    peer: Peer::Cidr(net("0.0.0.0/1")),
                });
                g.ingress.push(Rule {
                    proto: Proto::Tcp,
                    ports: (5000, 6000),
                    peer: Peer::Cidr(net("128.0.0.0/1")),
                });
            }),
            vec![(Risk, "database_sg_open")],
        ),
        (
            "database open to the VPC, all protocols",
            good,
            Box::new(|f| {
                f.groups
                    .get_mut("sg-db")
                    .expect("g")
                    .ingress
                    .push(all_from("10.0.0.0/16"));
            }),
            vec![(Risk, "database_sg_open")],
        ),
        (
            "database publicly accessible",
            good,
            Box::new(|f| {
                f.databases[0].public = true;
            }),
            vec![(Risk, "database_public")],
        ),
        (
            "database subnet group with a public subnet",
            good,
            Box::new(|f| {
                f.databases[0].subnets.push("pub-b".into());
            }),
            vec![(Risk, "database_in_public_subnet")],
        ),
        (
            "no backups, one AZ",
            good,
            Box::new(|f| {
                f.databases[0].backup_days = 0;
                f.databases[0].multi_az = false;
            }),
            vec![
                (Risk, "database_backups_off"),
                (Advice, "database_single_az"),
            ],
        ),
        // IAM.
        (
            "admin role",
            good,
            Box::new(|f| {
                f.functions[0]
                    .statements
                    .push(json!({"Effect": "Allow", "Action": "*", "Resource": "*"}));
            }),
            vec![(Risk, "wildcard_role")],
        ),
        (
            "NotAction role",
            good,
            Box::new(|f| {
                f.functions[0]
                    .statements
                    .push(json!({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}));
            }),
            vec![(Risk, "wildcard_role")],
        ),
        (
            "every secret",
            good,
            Box::new(|f| {
                f.functions[0].statements[2]["Resource"] =
                    json!("arn:aws:secretsmanager:eu-west-1:123456789012:secret:*");
            }),
            vec![(Risk, "wildcard_role")],
        ),
        (
            "role cannot read the secret",
            good,
            Box::new(|f| {
                f.functions[0]
                    .statements
                    .push(json!({"Effect": "Deny", "Action": "secretsmanager:*", "Resource": "*"}));
            }),
            vec![(Breaks, "secret_denied")],
        ),
        (
            "boundary without Secrets Manager",
            good,
            Box::new(|f| {
                f.functions[0].boundary = Some(vec![
                    json!({"Effect": "Allow", "Action": ["ec2:*", "logs:*"], "Resource": "*"}),
                ]);
            }),
            vec![(Breaks, "secret_denied")],
        ),
        (
            "secret policy denies the role",
            good,
            Box::new(|f| {
                f.secrets.get_mut(SECRET).expect("s").policy = vec![
                    json!({"Effect": "Deny", "Principal": {"AWS": ROLE}, "Action": "secretsmanager:GetSecretValue", "Resource": "*"}),
                ];
            }),
            vec![(Breaks, "secret_denied")],
        ),
        // A function that reads no secret is not asked about Secrets Manager.
        (
            "no secret, no endpoint, no NAT",
            good,
            Box::new(|f| {
                f.functions[0].statements.truncate(2);
                f.secrets.clear();
                f.endpoints.clear();
                f.tables.get_mut("rtb-a").expect("t").pop();
                f.tables.get_mut("rtb-b").expect("t").pop();
            }),
            vec![(Breaks, "internet_unreachable")],
        ),
        // Endpoint and secret policies, evaluated for the function's request.
        (
            "endpoint with AWS's default policy",
            good,
            Box::new(|f| {
                f.endpoints[0].policy = None;
            }),
            vec![(Risk, "endpoint_policy_open")],
        ),
        (
            "endpoint policy allowing everything explicitly",
            good,
            Box::new(|f| {
                f.endpoints[0].policy = Some(vec![
                    json!({"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "secretsmanager:*", "Resource": "*"}),
                ]);
            }),
            vec![(Risk, "endpoint_policy_open")],
        ),
        (
            "endpoint policy scoped to the account",
            good,
            Box::new(|f| {
                f.endpoints[0].policy = Some(vec![json!({"Effect": "Allow", "Principal": "*",
                    "Action": "secretsmanager:*", "Resource": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:*",
                    "Condition": {"StringEquals": {"aws:PrincipalAccount": "123456789012"}}})]);
            }),
            vec![],
        ),
        (
            "endpoint policy for another role",
            good,
            Box::new(|f| {
                f.endpoints[0].policy = Some(vec![json!({"Effect": "Allow", "Principal": "*",
                    "Action": "secretsmanager:GetSecretValue", "Resource": SECRET,
                    "Condition": {"ArnEquals": {"aws:PrincipalArn": "arn:aws:iam::123456789012:role/other"}}})]);
            }),
            vec![(Breaks, "secret_denied")],
        ),
        (
            "endpoint policy for another secret",
            good,
            Box::new(|f| {
                f.endpoints[0].policy = Some(vec![
                    json!({"Effect": "Allow", "Principal": {"AWS": ROLE},
                    "Action": "secretsmanager:GetSecretValue",
                    "Resource": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:other-XyZ"}),
                ]);
            }),
            vec![(Breaks, "secret_denied")],
        ),
        (
            "secret readable only by another role",
            good,
            Box::new(|f| {
                f.secrets.get_mut(SECRET).expect("s").policy = vec![
                    json!({"Effect": "Deny", "Principal": "*",
                    "Action": "secretsmanager:GetSecretValue", "Resource": "*",
                    "Condition": {"ArnNotEquals": {"aws:PrincipalArn": "arn:aws:iam::123456789012:role/old"}}}),
                ];
            }),
            vec![(Breaks, "secret_denied")],
        ),
        (
            "secret readable only through an endpoint the function does not use",
            good,
            Box::new(|f| {
                f.secrets.get_mut(SECRET).expect("s").policy =
                    vec![json!({"Effect": "Deny", "Principal": "*",
                    "Action": "secretsmanager:GetSecretValue", "Resource": "*",
                    "Condition": {"StringNotEquals": {"aws:SourceVpce": "vpce-elsewhere"}}})];
            }),
            vec![(Breaks, "secret_denied")],
        ),
        (
            "secret readable only through the endpoint, reached through NAT",
            good,
            Box::new(|f| {
                f.secrets.get_mut(SECRET).expect("s").policy =
                    vec![json!({"Effect": "Deny", "Principal": "*",
                    "Action": "secretsmanager:GetSecretValue", "Resource": "*",
                    "Condition": {"StringNotEquals": {"aws:SourceVpce": "vpce-sm"}}})];
                f.endpoints[0].private_dns = false;
            }),
            vec![
                (Breaks, "secret_denied"),
                (Advice, "secret_through_nat"),
                (Risk, "endpoint_without_private_dns"),
            ],
        ),
        (
            "secret without a resource policy",
            good,
            Box::new(|f| {
                f.secrets.get_mut(SECRET).expect("s").policy.clear();
            }),
            vec![(Advice, "secret_policy_missing")],
        ),
        // The region: logging and capacity.
        (
            "no flow logs, no trail, no GuardDuty",
            good,
            Box::new(|f| {
                f.region.flow_logs = Some(false);
                f.region.trail_logging = Some(false);
                f.region.guardduty = Some(false);
            }),
            vec![
                (Advice, "flow_logs_off"),
                (Advice, "cloudtrail_off"),
                (Advice, "guardduty_off"),
            ],
        ),
        (
            "what doctor could not read, it does not judge",
            good,
            Box::new(|f| f.region = RegionFacts::default()),
            vec![],
        ),
        (
            "network interfaces near the quota",
            good,
            Box::new(|f| f.region.enis = Some((4100, 5000))),
            vec![(Risk, "eni_quota_headroom")],
        ),
        (
            "network interfaces well below a raised quota",
            good,
            Box::new(|f| f.region.enis = Some((4100, 10000))),
            vec![],
        ),
        // IPv6, evaluated as IPv4 is.
        (
            "dual-stack function without an IPv6 route",
            dual_stack,
            Box::new(|f| {
                f.tables.get_mut("rtb-b").expect("t").pop();
            }),
            vec![(Breaks, "ipv6_unreachable")],
        ),
        (
            "IPv6 route to a gateway that is gone",
            dual_stack,
            Box::new(|f| {
                f.tables.get_mut("rtb-a").expect("t")[2].state = "blackhole".into();
            }),
            vec![(Breaks, "ipv6_unreachable")],
        ),
        (
            "::/0 to the NAT instance",
            dual_stack,
            Box::new(|f| {
                f.tables.get_mut("rtb-a").expect("t")[2].target = "i-nat".into();
            }),
            vec![(Breaks, "ipv6_unreachable")],
        ),
        (
            "LambdaSG lets no IPv6 out",
            dual_stack,
            Box::new(|f| {
                f.groups.get_mut("sg-lambda").expect("g").egress.pop();
            }),
            vec![(Breaks, "ipv6_unreachable")],
        ),
        (
            "network ACL denies IPv6 replies",
            dual_stack,
            Box::new(|f| {
                let acl = f.acls.get_mut("acl-default").expect("acl");
                acl.push(acl_entry(50, false, Some((1024, 65535)), "::/0", false));
            }),
            vec![(Breaks, "ipv6_unreachable")],
        ),
        (
            "a subnet of the dual-stack function without IPv6",
            dual_stack,
            Box::new(|f| {
                f.subnets.get_mut("priv-b").expect("s").ipv6 = None;
            }),
            vec![(Breaks, "ipv6_unreachable")],
        ),
        (
            "an endpoint answering IPv6 only to a function without IPv6",
            good,
            Box::new(|f| f.endpoints[0].dns_ipv6_only = true),
            vec![(Breaks, "endpoint_dns_ipv6_only")],
        ),
        (
            "an endpoint answering IPv6 only to a dual-stack function",
            dual_stack,
            Box::new(|f| f.endpoints[0].dns_ipv6_only = true),
            vec![],
        ),
        (
            "a dual-stack VPC whose function goes by NAT only",
            dual_stack,
            Box::new(|f| f.functions[0].ipv6 = false),
            vec![(Advice, "could_leave_by_ipv6")],
        ),
        (
            "rotation off",
            good,
            Box::new(|f| {
                f.secrets.get_mut(SECRET).expect("s").rotation = false;
            }),
            vec![(Advice, "secret_rotation_off")],
        ),
    ];
    for (name, base, mutate, want) in cases {
        let mut f = base();
        mutate(&mut f);
        let want: BTreeSet<(Severity, &str)> = want.into_iter().collect();
        let d = diagnose(&f);
        assert_eq!(checks(&f), want, "{name}: {:#?}", d.findings);
        for x in &d.findings {
            assert!(!x.problem.is_empty() && !x.fix.is_empty(), "{name}: {x:?}");
        }
    }
}

#[test]
fn a_broken_answer_names_the_hop_and_the_subnets() {
    let mut f = dev();
    f.groups.get_mut("sg-nat").expect("g").ingress = vec![all_from("10.0.11.0/24")];
    let d = diagnose(&f);
    let a = &d.answers[0];
    assert!(!a.internet.ok);
    assert_eq!(a.internet.via, vec!["NAT instance i-nat"]);
    let x = d
        .findings
        .iter()
        .find(|x| x.check == "internet_unreachable")
        .expect("finding");
    assert!(
        x.problem.contains("sg-nat") && x.problem.contains("10.0.10.0/24"),
        "{x:?}"
    );
    assert!(x.evidence.iter().any(|e| e.contains("priv-a")), "{x:?}");
    assert!(!x.evidence.iter().any(|e| e.contains("priv-b")), "{x:?}");
}

/// Prod with one regional NAT gateway instead of one per AZ: no subnet, both AZs routed
/// to it.
fn regional(f: &mut Facts) {
    f.gateways.clear();
    f.gateways.insert(
        "nat-r".into(),
        Gateway {
            subnet: String::new(),
            regional: true,
            state: "available".into(),
            public: true,
        },
    );
    for t in ["rtb-a", "rtb-b"] {
        if let Some(r) = f
            .tables
            .get_mut(t)
            .and_then(|rs| rs.iter_mut().find(|r| r.target.starts_with("nat-")))
        {
            r.target = "nat-r".into();
        }
    }
}
