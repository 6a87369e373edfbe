//! `natctl doctor --vpc VPC [--lambda FUNCTION]`: reads a VPC the way AWS evaluates it
//! and answers, for each VPC function, three questions with evidence: can it reach its
//! secret, its database, the internet? Each "no" names the hop that breaks and the fix.
//! Next to the answers, what puts the VPC at risk and advice, each with its reason.
//!
//! [`diagnose`] decides from [`Facts`] without I/O (security groups, network ACLs and
//! routes in [`net`], IAM in [`iam`]); [`read()`] gathers the facts.
//!
//! Severity: **breaks** — something that does not work now (exit status 3); **risk** —
//! works, but wider open or more fragile than it needs to be; **advice** — a best
//! practice with its reason. `--strict` makes any finding exit 3.

pub mod alarms;
pub mod capacity;
pub mod iam;
pub mod ipv6;
pub mod net;
pub mod pairs;
mod reader;

pub use reader::{Invalid, read};

use ipnet::IpNet;
use net::{AclEntry, End, Peer, Proto, Route, Rule, acl_allows, admits, covered, internet, lookup};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// A subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    /// Its AZ.
    pub az: String,
    /// Its IPv4 range.
    pub cidr: IpNet,
    /// The route table it routes by (explicit association, else the main table).
    pub table: Option<String>,
    /// Its network ACL.
    pub acl: Option<String>,
    /// Its IPv6 range, when it has one.
    pub ipv6: Option<ipnet::Ipv6Net>,
}

/// A NAT gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// Its subnet (none for a regional gateway).
    pub subnet: String,
    /// A regional NAT gateway (AvailabilityMode=regional): it belongs to the VPC, serves
    /// every AZ in that AZ, and reaches the internet through the VPC's internet gateway.
    pub regional: bool,
    /// `pending`, `available`, `failed`, `deleting`, `deleted`.
    pub state: String,
    /// Public connectivity (a private NAT gateway never reaches the internet).
    pub public: bool,
}

/// A NAT instance (or any instance or ENI a route sends the internet to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatHost {
    /// Its network interface.
    pub eni: String,
    /// Its subnet.
    pub subnet: String,
    /// Source/dest check on the ENI (EC2 drops forwarded traffic when on).
    pub source_dest_check: bool,
    /// The ENI's security groups.
    pub groups: Vec<String>,
    /// Whether it has a public IP or an Elastic IP.
    pub public_ip: bool,
}

/// An interface endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `vpce-...`
    pub id: String,
    /// `com.amazonaws.REGION.SERVICE`
    pub service: String,
    /// Private DNS on.
    pub private_dns: bool,
    /// Its security groups.
    pub groups: Vec<String>,
    /// Its subnets (one network interface in each).
    pub subnets: Vec<String>,
    /// The statements of its policy; `None` is AWS's default, full access for anyone.
    pub policy: Option<Vec<serde_json::Value>>,
    /// Its private DNS name answers IPv6 addresses only (DnsRecordIpType ipv6).
    pub dns_ipv6_only: bool,
}

/// A security group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// Inbound rules.
    pub ingress: Vec<Rule>,
    /// Outbound rules.
    pub egress: Vec<Rule>,
}

/// An RDS DB instance in the VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    /// Its identifier.
    pub id: String,
    /// Its port.
    pub port: u16,
    /// Its security groups.
    pub groups: Vec<String>,
    /// The subnets of its subnet group.
    pub subnets: Vec<String>,
    /// The AZ it runs in (its network interface is in that AZ's subnet).
    pub az: Option<String>,
    /// PubliclyAccessible.
    pub public: bool,
    /// Automated backup retention, days (0: off).
    pub backup_days: i32,
    /// Multi-AZ.
    pub multi_az: bool,
    /// Its default connection limit, estimated from its engine and class (and how).
    pub max_connections: Option<(u64, String)>,
    /// The latest time it can be restored to (RFC 3339), when it has one.
    pub latest_restorable: Option<String>,
}

/// A secret a function's role names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// Its ARN.
    pub arn: String,
    /// Rotation on.
    pub rotation: bool,
    /// When it last rotated (RFC 3339), if ever.
    pub last_rotated: Option<String>,
    /// The statements of its resource policy.
    pub policy: Vec<serde_json::Value>,
}

/// A VPC function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// Its name.
    pub name: String,
    /// Its subnets.
    pub subnets: Vec<String>,
    /// Its security groups.
    pub groups: Vec<String>,
    /// Its execution role's name.
    pub role: String,
    /// Its execution role's ARN.
    pub role_arn: String,
    /// The statements of the role's policies (inline and attached).
    pub statements: Vec<serde_json::Value>,
    /// The statements of its permissions boundary, if it has one.
    pub boundary: Option<Vec<serde_json::Value>>,
    /// How many copies of it can run at once, and why (its reserved concurrency, or
    /// the account's unreserved concurrency); `None` when Lambda did not say.
    pub concurrency: Option<(u64, String)>,
    /// Its VPC configuration allows IPv6 (Ipv6AllowedForDualStack).
    pub ipv6: bool,
}

/// Everything the diagnosis looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The VPC.
    pub vpc: String,
    /// Its IPv4 CIDRs.
    pub cidrs: Vec<IpNet>,
    /// enableDnsSupport.
    pub dns_support: bool,
    /// enableDnsHostnames.
    pub dns_hostnames: bool,
    /// Its subnets.
    pub subnets: BTreeMap<String, Subnet>,
    /// Route table -> its routes.
    pub tables: BTreeMap<String, Vec<Route>>,
    /// Internet gateways attached to the VPC.
    pub igws: BTreeSet<String>,
    /// NAT gateways (not deleted).
    pub gateways: BTreeMap<String, Gateway>,
    /// Instance or ENI ids that routes send the internet to.
    pub nat_hosts: BTreeMap<String, NatHost>,
    /// Interface endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Security groups of the VPC.
    pub groups: BTreeMap<String, Group>,
    /// Network ACL -> its entries.
    pub acls: BTreeMap<String, Vec<AclEntry>>,
    /// Its RDS DB instances.
    pub databases: Vec<Database>,
    /// The VPC functions looked at.
    pub functions: Vec<Function>,
    /// Secrets the functions' roles name.
    pub secrets: BTreeMap<String, Secret>,
    /// Route tables tagged natd:egress whose stack launched a NAT instance moments ago
    /// ([`NATD_START_WINDOW_SECS`]): table -> instance. Its natd takes the table when it
    /// starts; until then the missing route is the stack converging, not a mistake.
    pub natd_pending: BTreeMap<String, String>,
    /// The hot standby pairs whose route tables are in the VPC.
    pub pairs: Vec<pairs::Pair>,
    /// The NAT-instance stacks whose route tables are in the VPC, with their alarms.
    pub stack_alarms: Vec<alarms::StackAlarms>,
    /// What the account and region say about logging and capacity, where doctor could
    /// read it.
    pub region: RegionFacts,
}

/// The account-wide facts doctor advises on; `None` where the API did not answer (no
/// permission, or the service is not available), and then nothing is said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionFacts {
    /// Whether a flow log records the VPC (or all of its subnets).
    pub flow_logs: Option<bool>,
    /// Whether a CloudTrail trail that covers this region is logging.
    pub trail_logging: Option<bool>,
    /// Whether a GuardDuty detector is enabled in the region.
    pub guardduty: Option<bool>,
    /// Network interfaces in the region, and the quota (Service Quotas L-DF5E4CA3).
    pub enis: Option<(u64, u64)>,
}

/// The share of the network interface quota in use at which doctor calls the headroom
/// a risk: every VPC function needs interfaces (one per subnet and group set, more
/// while it scales), and at the quota its new invocations fail to start.
pub const ENI_USE_RISK: f64 = 0.8;

/// How long after a NAT instance's launch doctor waits for its natd to take the stack's
/// route tables: the Auto Scaling lifecycle hook's timeout (natctl's hook waits that
/// long for natd to complete the launch).
pub const NATD_START_WINDOW_SECS: i64 = 600;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Does not work now.
    Breaks,
    /// Works, but wider open or more fragile than needed.
    Risk,
    /// A best practice, with its reason.
    Advice,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// breaks, risk or advice.
    pub severity: Severity,
    /// Which check (stable key).
    pub check: &'static str,
    /// The resource at fault (for a function's question: the function).
    pub resource: String,
    /// What is wrong, in a sentence.
    pub problem: String,
    /// What doctor read that shows it.
    pub evidence: Vec<String>,
    /// How to fix it.
    pub fix: String,
}

/// The answer to one question about a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// Yes from every subnet of the function.
    pub ok: bool,
    /// How it gets there (from each subnet that does).
    pub via: Vec<String>,
    /// Where it breaks (from each subnet that does not).
    pub broken: Vec<String>,
}

/// The three questions, answered for one function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answers {
    /// The function.
    pub function: String,
    /// Secrets Manager, and the role's access to its secrets; `None` when its role
    /// allows no `secretsmanager:GetSecretValue` at all (the question does not apply).
    pub secret: Option<Answer>,
    /// Its databases (id -> answer).
    pub databases: BTreeMap<String, Answer>,
    /// The internet.
    pub internet: Answer,
    /// The internet over IPv6, when the function is allowed IPv6.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Answer>,
}

/// The diagnosis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    /// Per function.
    pub answers: Vec<Answers>,
    /// Findings, breaks first.
    pub findings: Vec<Finding>,
}

impl Diagnosis {
    /// How many findings of `s`.
    pub fn count(&self, s: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == s).count()
    }
}

/// Where a path breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hop {
    /// The resource that stops it.
    at: String,
    /// What stops it.
    what: String,
    /// The fix.
    fix: String,
}

fn hop(at: impl Into<String>, what: String, fix: String) -> Hop {
    Hop {
        at: at.into(),
        what,
        fix,
    }
}

fn is_nat_target(t: &str) -> bool {
    t.starts_with("nat-") || t.starts_with("i-") || t.starts_with("eni-")
}

impl Facts {
    fn rules(&self, groups: &[String], egress: bool) -> Vec<&Rule> {
        groups
            .iter()
            .filter_map(|g| self.groups.get(g))
            .flat_map(|g| if egress { &g.egress } else { &g.ingress })
            .collect()
    }

    fn internet_route(&self, subnet: &str) -> Option<(&str, Option<&Route>)> {
        let table = self.subnets.get(subnet)?.table.as_deref()?;
        Some((
            table,
            self.tables.get(table).and_then(|r| lookup(r, &internet())),
        ))
    }

    fn names(&self, groups: &[String]) -> String {
        groups
            .iter()
            .map(|g| match self.groups.get(g) {
                Some(x) if !x.name.is_empty() => format!("{g} ({})", x.name),
                _ => g.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Security groups on both ends of a TCP connection from `src` to `dst:port`.
    fn sg_hop(&self, src: (&End, &str), dst: (&End, &str), port: u16) -> Result<(), Hop> {
        let (s, s_name) = src;
        let (d, d_name) = dst;
        if !s.groups.is_empty() && !admits(&self.rules(&s.groups, true), Proto::Tcp, port, d) {
            return Err(hop(
                s.groups.join(","),
                format!(
                    "the security group(s) {} of {s_name} let no TCP {port} out to {d_name} ({})",
                    self.names(&s.groups),
                    d.range
                ),
                format!(
                    "add an outbound rule for TCP {port} to {} on {}",
                    d.groups
                        .first()
                        .cloned()
                        .unwrap_or_else(|| d.range.to_string()),
                    s.groups[0]
                ),
            ));
        }
        if !d.groups.is_empty() && !admits(&self.rules(&d.groups, false), Proto::Tcp, port, s) {
            return Err(hop(
                d.groups.join(","),
                format!(
                    "the security group(s) {} of {d_name} do not admit TCP {port} from {s_name} ({})",
                    self.names(&d.groups),
                    s.range
                ),
                format!(
                    "allow TCP {port} from {} on {}",
                    s.groups
                        .first()
                        .cloned()
                        .unwrap_or_else(|| s.range.to_string()),
                    d.groups[0]
                ),
            ));
        }
        Ok(())
    }

    /// One ACL check: `subnet`'s ACL, one direction.
    fn acl_hop(
        &self,
        subnet: &str,
        egress: bool,
        ports: (u16, u16),
        peer: &IpNet,
        what: &str,
    ) -> Result<(), Hop> {
        let Some(acl) = self.subnets.get(subnet).and_then(|s| s.acl.as_ref()) else {
            return Ok(());
        };
        let Some(entries) = self.acls.get(acl) else {
            return Ok(());
        };
        acl_allows(entries, egress, Proto::Tcp, ports, peer).map_err(|rule| {
            hop(
                acl.clone(),
                format!(
                    "network ACL {acl} of subnet {subnet} stops {what} ({rule}); ACLs are stateless: requests and replies each need a rule",
                ),
                format!(
                    "allow {} TCP {} {} {peer} in {acl}",
                    if egress { "outbound" } else { "inbound" },
                    if ports.0 == ports.1 {
                        ports.0.to_string()
                    } else {
                        format!("{}-{}", ports.0, ports.1)
                    },
                    if egress { "to" } else { "from" },
                ),
            )
        })
    }

    /// The ACLs of a connection from subnet `a` to a host in subnet `b` on `port`.
    fn acl_between(&self, a: &str, b: &str, port: u16) -> Result<(), Hop> {
        if a == b {
            return Ok(());
        }
        let (Some(ra), Some(rb)) = (self.subnets.get(a), self.subnets.get(b)) else {
            return Ok(());
        };
        let p = (port, port);
        self.acl_hop(a, true, p, &rb.cidr, &format!("requests to TCP {port}"))?;
        self.acl_hop(b, false, p, &ra.cidr, &format!("requests to TCP {port}"))?;
        self.acl_hop(
            b,
            true,
            net::EPHEMERAL,
            &ra.cidr,
            "replies to ports 1024-65535",
        )?;
        self.acl_hop(
            a,
            false,
            net::EPHEMERAL,
            &rb.cidr,
            "replies to ports 1024-65535",
        )
    }

    /// The ACLs of a subnet talking to the internet (requests out on 443, replies in).
    fn acl_internet(&self, subnet: &str) -> Result<(), Hop> {
        let i = internet();
        self.acl_hop(
            subnet,
            true,
            (443, 443),
            &i,
            "HTTPS requests to the internet",
        )?;
        self.acl_hop(
            subnet,
            false,
            net::EPHEMERAL,
            &i,
            "replies from the internet",
        )
    }

    /// Whether a regional NAT gateway reaches the internet: through the VPC's attached
    /// internet gateway (it has no subnet, so no subnet route or network ACL of the VPC
    /// is on its way).
    fn regional_uplink(&self, nat: &str) -> Result<(), Hop> {
        if self.igws.is_empty() {
            return Err(hop(
                nat,
                format!(
                    "regional NAT gateway {nat}: the VPC has no internet gateway attached, so it cannot reach the internet"
                ),
                "attach an internet gateway to the VPC".into(),
            ));
        }
        Ok(())
    }

    /// Whether a NAT in `subnet` reaches the internet itself.
    fn uplink(&self, nat: &str, subnet: &str) -> Result<(), Hop> {
        match self.internet_route(subnet) {
            Some((_, Some(r)))
                if r.target.starts_with("igw-")
                    && r.state == "active"
                    && self.igws.contains(&r.target) =>
            {
                self.acl_internet(subnet)
            }
            Some((table, r)) => Err(hop(
                nat,
                format!(
                    "{nat} is in subnet {subnet}, whose route table {table} {}: the NAT itself cannot reach the internet",
                    match r {
                        None => "has no route to the internet".to_string(),
                        Some(r) if r.state != "active" =>
                            format!("sends the internet to {} ({})", r.target, r.state),
                        Some(r) if r.target.starts_with("igw-") =>
                            format!("sends the internet to {}, which is not attached to the VPC", r.target),
                        Some(r) => format!("sends the internet to {}, not to an internet gateway", r.target),
                    }
                ),
                "put the NAT in a public subnet (0.0.0.0/0 to the VPC's internet gateway): natctl setup does".into(),
            )),
            None => Err(hop(
                nat,
                format!("{nat} is in subnet {subnet}, which is not in the VPC"),
                "recreate the NAT in a public subnet of the VPC: natctl setup".into(),
            )),
        }
    }

    /// The internet from `subnet` for a function with `groups`: how, or where it breaks.
    fn internet_path(&self, subnet: &str, groups: &[String], who: &str) -> Result<String, Hop> {
        let Some(s) = self.subnets.get(subnet) else {
            return Err(hop(
                subnet,
                format!("subnet {subnet} of {who} is not in the VPC"),
                "configure the function with subnets of this VPC".into(),
            ));
        };
        let me = End {
            range: s.cidr,
            groups: groups.to_vec(),
        };
        let world = End {
            range: internet(),
            groups: vec![],
        };
        let table = s.table.clone().unwrap_or_default();
        let route = self.internet_route(subnet).and_then(|(_, r)| r);
        if route.is_none_or(|r| r.state != "active")
            && let Some(i) = self.natd_pending.get(&table)
        {
            return Ok(format!(
                "NAT instance {i}, once its natd takes route table {table} (launched moments ago)"
            ));
        }
        let Some((_, Some(r))) = self.internet_route(subnet) else {
            return Err(hop(
                table.clone(),
                format!(
                    "route table {table} of subnet {subnet} has no route to the internet (0.0.0.0/0)"
                ),
                format!(
                    "route 0.0.0.0/0 to a NAT in {}: natctl setup --env dev|prod",
                    s.az
                ),
            ));
        };
        if r.state != "active" {
            return Err(hop(
                table.clone(),
                format!(
                    "route table {table} of subnet {subnet} sends 0.0.0.0/0 to {}, which no longer exists (blackhole)",
                    r.target
                ),
                "point it at a live NAT (natd does this by itself for tables tagged natd:egress)"
                    .into(),
            ));
        }
        if r.target.starts_with("igw-") {
            return Err(hop(
                subnet,
                format!(
                    "subnet {subnet} is public (0.0.0.0/0 goes to {}): a VPC function never gets a public IP, so it has no internet there",
                    r.target
                ),
                "put the function in private subnets, whose route tables send 0.0.0.0/0 to a NAT"
                    .into(),
            ));
        }
        if !is_nat_target(&r.target) {
            return Ok(format!("{} (doctor does not see beyond it)", r.target));
        }
        self.sg_hop((&me, who), (&world, "the internet"), 443)?;
        self.acl_internet(subnet)?;
        if r.target.starts_with("nat-") {
            let Some(g) = self.gateways.get(&r.target) else {
                return Err(hop(
                    table.clone(),
                    format!(
                        "route table {table} sends 0.0.0.0/0 to {}, which is not in the VPC",
                        r.target
                    ),
                    "point it at a NAT gateway of this VPC: natctl setup --env prod".into(),
                ));
            };
            if g.state != "available" {
                return Err(hop(
                    r.target.clone(),
                    format!("NAT gateway {} is {}, not available", r.target, g.state),
                    "wait for it, or replace it: natctl setup --env prod".into(),
                ));
            }
            if !g.public {
                return Err(hop(
                    r.target.clone(),
                    format!(
                        "NAT gateway {} has private connectivity: it never reaches the internet",
                        r.target
                    ),
                    "route 0.0.0.0/0 to a public NAT gateway: natctl setup --env prod".into(),
                ));
            }
            if g.regional {
                self.regional_uplink(&r.target)?;
                return Ok(format!("regional NAT gateway {}", r.target));
            }
            self.nat_acls(subnet, &s.cidr, &g.subnet)?;
            self.uplink(&r.target, &g.subnet)?;
            return Ok(format!("NAT gateway {}", r.target));
        }
        let Some(h) = self.nat_hosts.get(&r.target) else {
            return Err(hop(
                table.clone(),
                format!(
                    "route table {table} sends 0.0.0.0/0 to {}, which doctor cannot find",
                    r.target
                ),
                "point it at a live NAT: natctl setup".into(),
            ));
        };
        if h.source_dest_check {
            return Err(hop(
                h.eni.clone(),
                format!(
                    "NAT instance {} has source/dest check on: EC2 drops the traffic it forwards",
                    r.target
                ),
                format!(
                    "aws ec2 modify-network-interface-attribute --network-interface-id {} --no-source-dest-check (natd does this at start)",
                    h.eni
                ),
            ));
        }
        let nat = End {
            range: self
                .subnets
                .get(&h.subnet)
                .map(|x| x.cidr)
                .unwrap_or_else(internet),
            groups: h.groups.clone(),
        };
        if !h.groups.is_empty() && !admits(&self.rules(&h.groups, false), Proto::Tcp, 443, &me) {
            return Err(hop(
                h.groups.join(","),
                format!(
                    "the security group(s) {} of NAT instance {} do not admit traffic from {who} in {subnet} ({})",
                    self.names(&h.groups),
                    r.target,
                    s.cidr
                ),
                format!(
                    "allow all traffic from {} on {} (natctl setup admits the VPC's CIDRs)",
                    s.cidr, h.groups[0]
                ),
            ));
        }
        self.sg_hop(
            (&nat, &format!("NAT instance {}", r.target)),
            (&world, "the internet"),
            443,
        )?;
        if !h.public_ip {
            return Err(hop(
                r.target.clone(),
                format!("NAT instance {} has no public IP or Elastic IP: the internet gateway cannot translate its traffic", r.target),
                "associate an Elastic IP with it (natd holds the stack's), or launch it with a public IP".into(),
            ));
        }
        self.nat_acls(subnet, &s.cidr, &h.subnet)?;
        self.uplink(&r.target, &h.subnet)?;
        Ok(format!("NAT instance {}", r.target))
    }

    /// The NAT's subnet ACL for traffic from a function's subnet (packets keep their
    /// internet address as destination).
    fn nat_acls(&self, subnet: &str, cidr: &IpNet, nat_subnet: &str) -> Result<(), Hop> {
        if subnet == nat_subnet {
            return Ok(());
        }
        self.acl_hop(
            nat_subnet,
            false,
            (443, 443),
            cidr,
            "the function's requests",
        )?;
        self.acl_hop(
            nat_subnet,
            true,
            net::EPHEMERAL,
            cidr,
            "replies to the function",
        )
    }

    fn secrets_endpoint(&self) -> Option<&Endpoint> {
        let sm: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| e.service.ends_with(".secretsmanager"))
            .collect();
        sm.iter().find(|e| e.private_dns).or(sm.first()).copied()
    }

    /// Secrets Manager's API from `subnet`.
    fn secret_path(&self, subnet: &str, groups: &[String], who: &str) -> Result<String, Hop> {
        if !self.dns_support {
            return Err(hop(
                self.vpc.clone(),
                format!(
                    "VPC {} has enableDnsSupport off: {who} cannot resolve Secrets Manager's name",
                    self.vpc
                ),
                format!(
                    "aws ec2 modify-vpc-attribute --vpc-id {} --enable-dns-support",
                    self.vpc
                ),
            ));
        }
        let Some(s) = self.subnets.get(subnet) else {
            return self.internet_path(subnet, groups, who);
        };
        let me = End {
            range: s.cidr,
            groups: groups.to_vec(),
        };
        let endpoint = self.secrets_endpoint();
        let why_public = match endpoint {
            Some(e) if e.private_dns && self.dns_hostnames => None,
            Some(e) if e.private_dns => Some((
                format!(
                    "VPC {} has enableDnsHostnames off, so endpoint {}'s private DNS name does not apply",
                    self.vpc, e.id
                ),
                format!(
                    "aws ec2 modify-vpc-attribute --vpc-id {} --enable-dns-hostnames",
                    self.vpc
                ),
            )),
            Some(e) => Some((
                format!("Secrets Manager endpoint {} has private DNS off", e.id),
                format!(
                    "aws ec2 modify-vpc-endpoint --vpc-endpoint-id {} --private-dns-enabled",
                    e.id
                ),
            )),
            None => Some((
                "the VPC has no Secrets Manager interface endpoint".to_string(),
                "natctl setup --lambda FUNCTION --secret SECRET creates one".to_string(),
            )),
        };
        if let Some((why, fix)) = why_public {
            return match self.internet_path(subnet, groups, who) {
                Ok(via) => Ok(format!(
                    "the public Secrets Manager endpoint through {via} ({why})"
                )),
                Err(h) => Err(hop(
                    h.at,
                    format!(
                        "{why}, so Secrets Manager's name resolves to its public address; and {}",
                        h.what
                    ),
                    format!("{fix}; or {}", h.fix),
                )),
            };
        }
        let e = endpoint.expect("endpoint with private DNS");
        let mut order: Vec<&String> = e.subnets.iter().collect();
        order.sort_by_key(|x| self.subnets.get(*x).is_none_or(|y| y.az != s.az));
        let mut last = hop(
            e.id.clone(),
            format!("Secrets Manager endpoint {} has no subnet", e.id),
            format!(
                "aws ec2 modify-vpc-endpoint --vpc-endpoint-id {} --add-subnet-ids SUBNET",
                e.id
            ),
        );
        for es in order {
            let Some(x) = self.subnets.get(es) else {
                continue;
            };
            let there = End {
                range: x.cidr,
                groups: e.groups.clone(),
            };
            let r = self
                .sg_hop(
                    (&me, who),
                    (&there, &format!("Secrets Manager endpoint {}", e.id)),
                    443,
                )
                .and_then(|()| self.acl_between(subnet, es, 443));
            match r {
                Ok(()) => return Ok(format!("endpoint {} in {es}", e.id)),
                Err(h) => last = h,
            }
        }
        Err(last)
    }

    /// Database `db` from `subnet`.
    fn database_path(
        &self,
        subnet: &str,
        groups: &[String],
        who: &str,
        db: &Database,
    ) -> Result<String, Hop> {
        let Some(s) = self.subnets.get(subnet) else {
            return Err(hop(
                subnet,
                format!("subnet {subnet} is not in the VPC"),
                String::new(),
            ));
        };
        let me = End {
            range: s.cidr,
            groups: groups.to_vec(),
        };
        let mut order: Vec<&String> = db
            .subnets
            .iter()
            .filter(|x| {
                db.az.is_none() || self.subnets.get(*x).map(|y| Some(&y.az)) == Some(db.az.as_ref())
            })
            .collect();
        if order.is_empty() {
            order = db.subnets.iter().collect();
        }
        let mut last = hop(
            db.id.clone(),
            format!("database {} has no subnet in the VPC", db.id),
            "check its DB subnet group".into(),
        );
        for ds in order {
            let Some(x) = self.subnets.get(ds) else {
                continue;
            };
            let there = End {
                range: x.cidr,
                groups: db.groups.clone(),
            };
            let r = self
                .sg_hop(
                    (&me, who),
                    (&there, &format!("database {}", db.id)),
                    db.port,
                )
                .and_then(|()| self.acl_between(subnet, ds, db.port));
            match r {
                Ok(()) => return Ok(format!("{} on TCP {} in {ds}", db.id, db.port)),
                Err(h) => last = h,
            }
        }
        Err(last)
    }

    /// The databases a function is meant to reach: those whose groups admit its groups
    /// by reference; if none does, every database of the VPC.
    fn databases_of(&self, func: &Function) -> (Vec<&Database>, bool) {
        let referenced: Vec<&Database> = self
            .databases
            .iter()
            .filter(|d| {
                self.rules(&d.groups, false)
                    .iter()
                    .any(|r| matches!(&r.peer, Peer::Group(g) if func.groups.contains(g)))
            })
            .collect();
        if referenced.is_empty() {
            (self.databases.iter().collect(), self.databases.len() == 1)
        } else {
            (referenced, true)
        }
    }

    /// Secret ARNs a function's role names for GetSecretValue (without wildcards).
    fn secrets_of(&self, func: &Function) -> Vec<&Secret> {
        self.secrets
            .values()
            .filter(|s| {
                func.statements.iter().any(|st| {
                    st["Effect"] == "Allow" && iam::strings(&st["Resource"]).contains(&s.arn)
                })
            })
            .collect()
    }
}

/// Where a question breaks: each hop with the subnets it breaks from.
type Hops = Vec<(Hop, Vec<String>)>;

/// Runs `path` from each subnet; groups the failures by the hop.
fn ask(func: &Function, path: impl Fn(&str) -> Result<String, Hop>) -> (Answer, Hops) {
    let mut a = Answer {
        ok: true,
        via: vec![],
        broken: vec![],
    };
    let mut hops: Vec<(Hop, Vec<String>)> = Vec::new();
    for s in &func.subnets {
        match path(s) {
            Ok(v) => {
                if !a.via.contains(&v) {
                    a.via.push(v);
                }
            }
            Err(h) => {
                a.ok = false;
                if !a.broken.contains(&h.what) {
                    a.broken.push(h.what.clone());
                }
                match hops.iter_mut().find(|(x, _)| x.what == h.what) {
                    Some((_, subnets)) => subnets.push(s.clone()),
                    None => hops.push((h, vec![s.clone()])),
                }
            }
        }
    }
    (a, hops)
}

/// One "breaks" finding for a question a function gets "no" to: the first hop in the
/// sentence, every subnet's hop in the evidence.
fn broken(check: &'static str, func: &Function, target: &str, hops: Hops) -> Option<Finding> {
    let first = hops.first()?.0.clone();
    let subnets: Vec<String> = hops.iter().flat_map(|(_, s)| s.clone()).collect();
    let mut fixes: Vec<String> = Vec::new();
    for (h, _) in &hops {
        if !fixes.contains(&h.fix) {
            fixes.push(h.fix.clone());
        }
    }
    Some(Finding {
        severity: Severity::Breaks,
        check,
        resource: func.name.clone(),
        problem: format!(
            "function {} cannot reach {target} from subnet(s) {}: {}",
            func.name,
            subnets.join(", "),
            first.what
        ),
        evidence: hops
            .iter()
            .map(|(h, s)| format!("from {}: breaks at {}: {}", s.join(", "), h.at, h.what))
            .collect(),
        fix: fixes.join("; "),
    })
}

/// The diagnosis of `f`.
pub fn diagnose(f: &Facts) -> Diagnosis {
    let mut out: Vec<Finding> = Vec::new();
    let mut answers = Vec::new();
    for func in &f.functions {
        let who = format!("function {}", func.name);
        // The internet.
        let (internet, hops) = ask(func, |s| f.internet_path(s, &func.groups, &who));
        out.extend(broken("internet_unreachable", func, "the internet", hops));
        // Secrets Manager, then IAM on each secret its role names.
        let get = "secretsmanager:GetSecretValue";
        let mut secret = None;
        if iam::mentions(&func.statements, get) {
            let (mut a, hops) = ask(func, |s| f.secret_path(s, &func.groups, &who));
            out.extend(broken("secret_unreachable", func, "Secrets Manager", hops));
            out.extend(ipv6::endpoint_dns(f, func, &mut a));
            secret = Some(a);
        }
        if let Some(secret) = secret
            .as_ref()
            .filter(|a| a.ok && a.via.iter().any(|v| v.starts_with("the public")))
        {
            out.push(Finding {
                severity: Severity::Advice,
                check: "secret_through_nat",
                resource: func.name.clone(),
                problem: format!(
                    "{who} reaches Secrets Manager through NAT: its secret leaves the VPC, and every call is billed as NAT data processing"
                ),
                evidence: secret.via.clone(),
                fix: "a Secrets Manager interface endpoint with private DNS keeps it inside: natctl setup --lambda FUNCTION --secret SECRET".into(),
            });
        }
        for s in f.secrets_of(func) {
            let mut denied = match iam::decide(&func.statements, get, &s.arn) {
                iam::Decision::Allow(_) => None,
                iam::Decision::Deny(st) => Some(format!("its role {} denies it ({st})", func.role)),
                iam::Decision::Implicit => {
                    Some(format!("no statement of its role {} allows it", func.role))
                }
            };
            if denied.is_none()
                && let Some(b) = &func.boundary
                && !matches!(iam::decide(b, get, &s.arn), iam::Decision::Allow(_))
            {
                denied = Some(format!(
                    "the permissions boundary of role {} does not allow it",
                    func.role
                ));
            }
            // The request as AWS sees it: through the endpoint when private DNS sends
            // the function there, else from the NAT's public address.
            let through = secret
                .as_ref()
                .filter(|a| a.via.iter().any(|v| v.starts_with("endpoint ")))
                .and(f.secrets_endpoint());
            let req = iam::Request {
                principal_arn: func.role_arn.clone(),
                source_vpce: through.map(|e| e.id.clone()),
                source_vpc: through.map(|_| f.vpc.clone()),
            };
            if denied.is_none()
                && let Some(e) = through
                && let Some(policy) = &e.policy
            {
                // An endpoint policy statement without a Principal applies to everyone.
                let own: Vec<serde_json::Value> = policy
                    .iter()
                    .filter(|st| {
                        st.get("Principal").is_none() || principal_matches(st, &func.role_arn)
                    })
                    .cloned()
                    .collect();
                match iam::decide_in(&own, get, &s.arn, Some(&req)) {
                    iam::Decision::Allow(_) => {}
                    iam::Decision::Deny(st) => {
                        denied = Some(format!("the policy of endpoint {} denies it ({st})", e.id));
                    }
                    iam::Decision::Implicit => {
                        denied = Some(format!(
                            "the policy of endpoint {} does not allow it for role {}",
                            e.id, func.role
                        ));
                    }
                }
            }
            if denied.is_none() {
                let own: Vec<serde_json::Value> = s
                    .policy
                    .iter()
                    .filter(|st| principal_matches(st, &func.role_arn))
                    .cloned()
                    .collect();
                if let iam::Decision::Deny(st) = iam::decide_in(&own, get, &s.arn, Some(&req)) {
                    denied = Some(format!(
                        "the secret's resource policy denies it ({st}){}",
                        if through.is_some() {
                            String::new()
                        } else {
                            " (the call does not come through a VPC endpoint)".to_string()
                        }
                    ));
                }
            }
            if let Some(why) = denied {
                if let Some(a) = secret.as_mut() {
                    a.ok = false;
                    a.broken.push(why.clone());
                }
                out.push(Finding {
                    severity: Severity::Breaks,
                    check: "secret_denied",
                    resource: func.name.clone(),
                    problem: format!("{who} may not read secret {}: {why}", s.arn),
                    evidence: vec![format!("GetSecretValue on {} as {}", s.arn, func.role_arn)],
                    fix: format!(
                        "allow secretsmanager:GetSecretValue on {} for role {} (natctl setup --lambda --secret writes that policy)",
                        s.arn, func.role
                    ),
                });
            }
        }
        // Databases.
        let mut databases = BTreeMap::new();
        let (mine, referenced) = f.databases_of(func);
        let tried: Vec<(&Database, Answer, Hops)> = mine
            .iter()
            .map(|db| {
                let (a, h) = ask(func, |s| f.database_path(s, &func.groups, &who, db));
                (*db, a, h)
            })
            .collect();
        // Without a group reference, databases the function reaches are its own; only
        // when it reaches none are the others reported.
        let reaches_one = tried.iter().any(|(_, a, _)| a.ok);
        for (db, a, hops) in tried {
            if !a.ok && (referenced || !reaches_one) {
                out.extend(broken(
                    "database_unreachable",
                    func,
                    &format!("database {}", db.id),
                    hops,
                ));
            }
            if a.ok || referenced || !reaches_one {
                databases.insert(db.id.clone(), a);
            }
        }
        // The endpoint in every AZ the function runs in.
        if let Some(e) = f.secrets_endpoint().filter(|e| e.private_dns) {
            let have: BTreeSet<&String> = e
                .subnets
                .iter()
                .filter_map(|s| f.subnets.get(s).map(|x| &x.az))
                .collect();
            let missing: BTreeSet<&String> = func
                .subnets
                .iter()
                .filter_map(|s| f.subnets.get(s).map(|x| &x.az))
                .filter(|az| !have.contains(az))
                .collect();
            if !missing.is_empty() && !have.is_empty() {
                out.push(Finding {
                    severity: Severity::Risk,
                    check: "endpoint_missing_az",
                    resource: e.id.clone(),
                    problem: format!(
                        "Secrets Manager endpoint {} has no subnet in {}, where {who} runs: calls from there cross AZs (billed), and fail when the endpoint's AZ does",
                        e.id,
                        missing.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                    evidence: vec![format!("endpoint AZs: {}", have.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", "))],
                    fix: format!("aws ec2 modify-vpc-endpoint --vpc-endpoint-id {} --add-subnet-ids SUBNET-IN-EACH-MISSING-AZ (natctl setup --lambda covers the function's AZs)", e.id),
                });
            }
        }
        // What the role allows beyond what it needs.
        let mut statements = func.statements.clone();
        if let Some(b) = &func.boundary {
            // A boundary caps what is allowed: an excess it does not allow is not one.
            statements.retain(|st| {
                iam::strings(&st["Action"]).iter().all(|a| {
                    a.contains('*') || matches!(iam::decide(b, a, "*"), iam::Decision::Allow(_))
                })
            });
        }
        let excess = iam::excess(&statements);
        if !excess.is_empty() {
            out.push(Finding {
                severity: Severity::Risk,
                check: "wildcard_role",
                resource: func.role.clone(),
                problem: format!(
                    "execution role {} of {who} allows more than a VPC function needs",
                    func.role
                ),
                evidence: excess,
                fix: "grant only what the function uses: secretsmanager:GetSecretValue on its secret's ARN, the network-interface actions, its own log group (natctl setup --lambda writes that policy)".into(),
            });
        }
        let reached: Vec<&Database> = f
            .databases
            .iter()
            .filter(|d| databases.get(&d.id).is_some_and(|a| a.ok))
            .collect();
        out.extend(capacity::findings(func, &reached));
        let ipv6 = if func.ipv6 {
            let (a, hops) = ask(func, |s| f.ipv6_path(s, &func.groups, &who));
            out.extend(broken(
                "ipv6_unreachable",
                func,
                "the internet over IPv6",
                hops,
            ));
            Some(a)
        } else {
            out.extend(ipv6::could_leave_by_ipv6(f, func, &internet));
            None
        };
        answers.push(Answers {
            function: func.name.clone(),
            secret,
            databases,
            internet,
            ipv6,
        });
    }
    out.extend(vpc_findings(f));
    out.extend(pairs::findings(f));
    out.extend(alarms::findings(&f.stack_alarms));
    // One finding per (check, resource, problem).
    let mut seen = BTreeSet::new();
    out.retain(|x| seen.insert((x.check, x.resource.clone(), x.problem.clone())));
    out.sort_by_key(|x| x.severity);
    Diagnosis {
        answers,
        findings: out,
    }
}

fn principal_matches(st: &serde_json::Value, role_arn: &str) -> bool {
    let p = &st["Principal"];
    if p == "*" {
        return true;
    }
    let aws = iam::strings(&p["AWS"]);
    let account = role_arn.split(':').nth(4).unwrap_or_default();
    aws.iter().any(|x| {
        x == "*" || x == role_arn || x == account || *x == format!("arn:aws:iam::{account}:root")
    })
}

/// Whether an endpoint policy lets a principal of another account read a secret of
/// another account through the endpoint: AWS's default policy does, and so does any
/// policy that scopes neither principals nor resources. That makes the endpoint a way
/// out of the VPC for data, with credentials from anywhere.
fn endpoint_open(e: &Endpoint) -> Option<String> {
    let region = e
        .service
        .strip_prefix("com.amazonaws.")
        .and_then(|r| r.strip_suffix(".secretsmanager"))
        .unwrap_or("us-east-1");
    let stranger = "arn:aws:iam::999999999999:role/anyone";
    let theirs = format!("arn:aws:secretsmanager:{region}:999999999999:secret:any-AbCdEf");
    let req = iam::Request {
        principal_arn: stranger.into(),
        source_vpce: Some(e.id.clone()),
        source_vpc: None,
    };
    match &e.policy {
        None => Some("no policy: AWS's default allows every action by anyone".into()),
        Some(p) => {
            let theirs_ok: Vec<serde_json::Value> = p
                .iter()
                .filter(|st| st.get("Principal").is_none() || principal_matches(st, stranger))
                .cloned()
                .collect();
            match iam::decide_in(
                &theirs_ok,
                "secretsmanager:GetSecretValue",
                &theirs,
                Some(&req),
            ) {
                iam::Decision::Allow(st) => Some(format!(
                    "{st} allows GetSecretValue on another account's secret by another account's role"
                )),
                _ => None,
            }
        }
    }
}

/// The region's logging and capacity, as advice and risk.
fn region_findings(f: &Facts) -> Vec<Finding> {
    let r = &f.region;
    let mut out = Vec::new();
    if r.flow_logs == Some(false) {
        out.push(Finding {
            severity: Severity::Advice,
            check: "flow_logs_off",
            resource: f.vpc.clone(),
            problem: format!(
                "VPC {} has no flow logs: when a function cannot connect, or something connects that should not, there is no record of which flows were accepted or rejected",
                f.vpc
            ),
            evidence: vec![format!("DescribeFlowLogs: none for {} or its subnets", f.vpc)],
            fix: "natctl setup ... --flow-logs cloudwatch (a log group with a retention, and a delivery role that may write there only), or --flow-logs s3://BUCKET".into(),
        });
    }
    if r.trail_logging == Some(false) {
        out.push(Finding {
            severity: Severity::Advice,
            check: "cloudtrail_off",
            resource: f.vpc.clone(),
            problem: "no CloudTrail trail is logging this region: who changed a security group, a route or a secret's policy is kept only 90 days in the event history, and not in a place you control".into(),
            evidence: vec!["DescribeTrails/GetTrailStatus: no trail with IsLogging for this region".into()],
            fix: "aws cloudtrail create-trail --name management --s3-bucket-name BUCKET --is-multi-region-trail && aws cloudtrail start-logging --name management".into(),
        });
    }
    if r.guardduty == Some(false) {
        out.push(Finding {
            severity: Severity::Advice,
            check: "guardduty_off",
            resource: f.vpc.clone(),
            problem: "GuardDuty is not enabled in this region: a compromised function calling out to a known bad address, or credentials used from elsewhere, go unnoticed".into(),
            evidence: vec!["ListDetectors/GetDetector: no detector ENABLED".into()],
            fix: "aws guardduty create-detector --enable".into(),
        });
    }
    if let Some((used, quota)) = r.enis
        && quota > 0
        && used as f64 >= quota as f64 * ENI_USE_RISK
    {
        out.push(Finding {
            severity: Severity::Risk,
            check: "eni_quota_headroom",
            resource: f.vpc.clone(),
            problem: format!(
                "{used} network interfaces of a quota of {quota} are in use in this region ({:.0} %): VPC functions need interfaces to scale, and at the quota their new execution environments fail to start",
                used as f64 * 100.0 / quota as f64
            ),
            evidence: vec![format!("DescribeNetworkInterfaces: {used}; Service Quotas vpc/L-DF5E4CA3: {quota}")],
            fix: "aws service-quotas request-service-quota-increase --service-code vpc --quota-code L-DF5E4CA3 --desired-value N, and delete interfaces nothing uses".into(),
        });
    }
    out
}

/// What is wrong with the VPC itself, functions or not.
fn vpc_findings(f: &Facts) -> Vec<Finding> {
    let mut out = region_findings(f);
    for e in f
        .endpoints
        .iter()
        .filter(|e| e.service.ends_with(".secretsmanager"))
    {
        if let Some(why) = endpoint_open(e) {
            out.push(Finding {
                severity: Severity::Risk,
                check: "endpoint_policy_open",
                resource: e.id.clone(),
                problem: format!(
                    "Secrets Manager endpoint {} lets anything in the VPC use it with any credentials, for any secret of any account: a way out for data that bypasses NAT and its logs",
                    e.id
                ),
                evidence: vec![why],
                fix: format!(
                    "natctl setup --lambda FUNCTION --secret SECRET puts a policy allowing only that secret for the stack's role (--endpoint-policy account: this account's principals and secrets); or aws ec2 modify-vpc-endpoint --vpc-endpoint-id {} --policy-document FILE",
                    e.id
                ),
            });
        }
    }
    let used: BTreeSet<&String> = f
        .subnets
        .values()
        .filter_map(|s| s.table.as_ref())
        .collect();
    // Routes to the internet that go nowhere, NATs that cannot forward.
    for (table, routes) in &f.tables {
        let Some(r) = lookup(routes, &internet()) else {
            continue;
        };
        if r.state == "blackhole" && !f.natd_pending.contains_key(table) {
            out.push(Finding {
                severity: if used.contains(table) { Severity::Breaks } else { Severity::Risk },
                check: "blackhole_route",
                resource: table.clone(),
                problem: format!(
                    "route table {table} sends 0.0.0.0/0 to {}, which no longer exists (blackhole): its subnets have no egress",
                    r.target
                ),
                evidence: vec![format!("{} -> {} ({})", r.dest.map(|d| d.to_string()).unwrap_or_default(), r.target, r.state)],
                fix: "point it at a live NAT (natd does this by itself for tables tagged natd:egress; natctl status shows the stack)".into(),
            });
        }
    }
    for (table, i) in &f.natd_pending {
        out.push(Finding {
            severity: Severity::Advice,
            check: "natd_pending",
            resource: table.clone(),
            problem: format!(
                "route table {table} waits for NAT instance {i}, launched moments ago: its natd takes the table when it starts"
            ),
            evidence: vec![format!("{table} is natd's: tagged {} or named in its boot configuration", natd_contract::EGRESS_TAG)],
            fix: "nothing yet: natctl status shows when natd holds it; if it does not within 10 minutes, natctl status --name STACK explains why".into(),
        });
    }
    let mut nats: BTreeSet<&String> = BTreeSet::new();
    for (table, routes) in &f.tables {
        if let Some(r) =
            lookup(routes, &internet()).filter(|r| r.state == "active" && is_nat_target(&r.target))
        {
            let _ = table;
            nats.insert(&r.target);
        }
    }
    for id in nats {
        if let Some(h) = f.nat_hosts.get(id) {
            if h.source_dest_check {
                out.push(Finding {
                    severity: Severity::Breaks,
                    check: "source_dest_check_on",
                    resource: h.eni.clone(),
                    problem: format!("{id} is a NAT route target but has source/dest check on: EC2 drops the traffic it forwards"),
                    evidence: vec![format!("{}: SourceDestCheck=true", h.eni)],
                    fix: format!("aws ec2 modify-network-interface-attribute --network-interface-id {} --no-source-dest-check (natd does this at start)", h.eni),
                });
            }
            if !h.public_ip {
                out.push(Finding {
                    severity: Severity::Breaks,
                    check: "nat_without_public_ip",
                    resource: id.clone(),
                    problem: format!("NAT instance {id} has no public IP or Elastic IP: the internet gateway cannot translate its traffic"),
                    evidence: vec![format!("{}: no association", h.eni)],
                    fix: "associate an Elastic IP with it (natd holds the stack's), or launch it with a public IP".into(),
                });
            }
            if let Err(h) = f.uplink(id, &h.subnet) {
                out.push(Finding {
                    severity: Severity::Breaks,
                    check: "nat_without_internet",
                    resource: id.clone(),
                    problem: h.what,
                    evidence: vec![],
                    fix: h.fix,
                });
            }
        } else if let Some(g) = f.gateways.get(id) {
            if g.state != "available" {
                out.push(Finding {
                    severity: if g.state == "pending" {
                        Severity::Advice
                    } else {
                        Severity::Breaks
                    },
                    check: "nat_gateway_not_available",
                    resource: id.clone(),
                    problem: format!("NAT gateway {id}, a route target, is {}", g.state),
                    evidence: vec![format!("State={}", g.state)],
                    fix: "replace it: natctl setup --env prod".into(),
                });
            } else if !g.public {
                out.push(Finding {
                    severity: Severity::Breaks,
                    check: "nat_without_internet",
                    resource: id.clone(),
                    problem: format!("NAT gateway {id} has private connectivity, yet a route sends the internet to it"),
                    evidence: vec!["ConnectivityType=private".into()],
                    fix: "route 0.0.0.0/0 to a public NAT gateway: natctl setup --env prod".into(),
                });
            } else if let Err(h) = if g.regional {
                f.regional_uplink(id)
            } else {
                f.uplink(id, &g.subnet)
            } {
                out.push(Finding {
                    severity: Severity::Breaks,
                    check: "nat_without_internet",
                    resource: id.clone(),
                    problem: h.what,
                    evidence: vec![],
                    fix: h.fix,
                });
            }
        }
    }
    // One NAT gateway serving several AZs.
    let mut served: BTreeMap<&String, BTreeSet<&String>> = BTreeMap::new();
    for (subnet, s) in &f.subnets {
        if let Some((_, Some(r))) = f.internet_route(subnet)
            && f.gateways.contains_key(&r.target)
        {
            served.entry(&r.target).or_default().insert(&s.az);
        }
    }
    for (gw, azs) in served {
        if f.gateways.get(gw).is_some_and(|g| g.regional) {
            continue; // one gateway for every AZ, by design
        }
        let home = f
            .gateways
            .get(gw)
            .and_then(|g| f.subnets.get(&g.subnet))
            .map(|s| s.az.as_str())
            .unwrap_or("?");
        if azs.len() > 1 || azs.iter().any(|a| a.as_str() != home) {
            out.push(Finding {
                severity: Severity::Risk,
                check: "one_nat_for_several_azs",
                resource: gw.clone(),
                problem: format!(
                    "NAT gateway {gw} in {home} serves private subnets in {}: when its AZ fails they all lose egress, and cross-AZ traffic is billed",
                    azs.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
                ),
                evidence: vec![],
                fix: "one NAT gateway per AZ with AZ-local routes: natctl setup --env prod".into(),
            });
        }
    }
    // Endpoints and DNS.
    for e in &f.endpoints {
        if !e.private_dns {
            out.push(Finding {
                severity: Severity::Risk,
                check: "endpoint_without_private_dns",
                resource: e.id.clone(),
                problem: format!(
                    "interface endpoint {} ({}) has private DNS off: the SDK resolves the public name and goes through NAT or fails",
                    e.id, e.service
                ),
                evidence: vec!["PrivateDnsEnabled=false".into()],
                fix: format!("aws ec2 modify-vpc-endpoint --vpc-endpoint-id {} --private-dns-enabled", e.id),
            });
        } else if !(f.dns_support && f.dns_hostnames) {
            let off: Vec<&str> = [
                (!f.dns_support).then_some("enableDnsSupport"),
                (!f.dns_hostnames).then_some("enableDnsHostnames"),
            ]
            .into_iter()
            .flatten()
            .collect();
            out.push(Finding {
                severity: Severity::Risk,
                check: "vpc_dns_off",
                resource: f.vpc.clone(),
                problem: format!(
                    "VPC {} has {} off: endpoint {}'s private DNS name does not resolve to it, so {} goes public",
                    f.vpc,
                    off.join(" and "),
                    e.id,
                    e.service
                ),
                evidence: off.iter().map(|a| format!("{a}=false")).collect(),
                fix: format!(
                    "aws ec2 modify-vpc-attribute --vpc-id {} {}",
                    f.vpc,
                    off.iter().map(|a| if *a == "enableDnsSupport" { "--enable-dns-support" } else { "--enable-dns-hostnames" }).collect::<Vec<_>>().join(" ")
                ),
            });
        }
    }
    // Databases.
    let fn_ranges: Vec<IpNet> = f
        .functions
        .iter()
        .flat_map(|x| &x.subnets)
        .filter_map(|s| f.subnets.get(s).map(|x| x.cidr))
        .collect();
    let fn_groups: BTreeSet<&String> = f.functions.iter().flat_map(|x| &x.groups).collect();
    let mut db_groups: BTreeMap<&String, u16> = BTreeMap::new();
    for d in &f.databases {
        for g in &d.groups {
            db_groups.insert(g, d.port);
        }
        if d.public {
            out.push(Finding {
                severity: Severity::Risk,
                check: "database_public",
                resource: d.id.clone(),
                problem: format!("database {} is publicly accessible: its name resolves to a public address from outside the VPC", d.id),
                evidence: vec!["PubliclyAccessible=true".into()],
                fix: format!("aws rds modify-db-instance --db-instance-identifier {} --no-publicly-accessible --apply-immediately", d.id),
            });
        }
        let public_subnets: Vec<&String> = d
            .subnets
            .iter()
            .filter(|s| matches!(f.internet_route(s), Some((_, Some(r))) if r.target.starts_with("igw-")))
            .collect();
        if !public_subnets.is_empty() {
            out.push(Finding {
                severity: Severity::Risk,
                check: "database_in_public_subnet",
                resource: d.id.clone(),
                problem: format!(
                    "database {}'s subnet group has public subnet(s) {} (0.0.0.0/0 to an internet gateway): one setting away from the internet",
                    d.id,
                    public_subnets.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
                evidence: vec![],
                fix: "give it a DB subnet group of private subnets only".into(),
            });
        }
        if d.backup_days == 0 {
            out.push(Finding {
                severity: Severity::Risk,
                check: "database_backups_off",
                resource: d.id.clone(),
                problem: format!("database {} keeps no automated backups: no point-in-time restore", d.id),
                evidence: vec!["BackupRetentionPeriod=0".into()],
                fix: format!("aws rds modify-db-instance --db-instance-identifier {} --backup-retention-period 7", d.id),
            });
        }
        out.extend(capacity::restore_findings(d));
        if !d.multi_az {
            out.push(Finding {
                severity: Severity::Advice,
                check: "database_single_az",
                resource: d.id.clone(),
                problem: format!("database {} runs in one AZ: in prod, an AZ failure or maintenance takes it down for minutes", d.id),
                evidence: vec!["MultiAZ=false".into()],
                fix: format!("for prod: aws rds modify-db-instance --db-instance-identifier {} --multi-az", d.id),
            });
        }
    }
    for (g, name) in f
        .groups
        .iter()
        .filter(|(_, g)| g.name.ends_with("-database"))
        .map(|(id, g)| (id, &g.name))
    {
        let _ = name;
        db_groups.entry(g).or_insert(0);
    }
    for (g, port) in db_groups {
        let Some(group) = f.groups.get(g) else {
            continue;
        };
        for r in &group.ingress {
            if port != 0 && !r.covers(Proto::Tcp, port) {
                continue;
            }
            let wide = match &r.peer {
                Peer::Cidr(c) => {
                    if fn_ranges.is_empty() {
                        // No function to compare with: the world, or the whole VPC.
                        c.prefix_len() == 0
                            || matches!(c, IpNet::V6(_))
                            || f.cidrs.iter().any(|v| c.contains(v))
                            || !f.cidrs.iter().any(|v| v.contains(c))
                    } else {
                        !covered(&fn_ranges, c)
                    }
                }
                Peer::Group(src) => r.proto == Proto::All && src != g && !fn_groups.contains(src),
                Peer::PrefixList(_) => true,
            };
            if !wide {
                continue;
            }
            let who = match &r.peer {
                Peer::Cidr(c) if c.prefix_len() == 0 => " (anyone)".to_string(),
                Peer::Cidr(c) if f.cidrs.iter().any(|v| c.contains(v)) => {
                    " (the whole VPC)".to_string()
                }
                _ => String::new(),
            };
            out.push(Finding {
                severity: Severity::Risk,
                check: "database_sg_open",
                resource: g.clone(),
                problem: format!(
                    "database security group {g} ({}) admits {}{who}: more than the function's security group needs",
                    group.name,
                    r.describe()
                ),
                evidence: vec![format!("inbound: {}", r.describe())],
                fix: format!(
                    "replace that rule with one admitting the database port from the Lambda function's security group only (aws ec2 revoke-security-group-ingress --group-id {g} ...)"
                ),
            });
        }
    }
    // Secrets.
    for s in f.secrets.values() {
        if s.policy.is_empty() {
            out.push(Finding {
                severity: Severity::Advice,
                check: "secret_policy_missing",
                resource: s.arn.clone(),
                problem: format!(
                    "secret {} has no resource policy: any principal of the account whose IAM policy allows GetSecretValue reads it",
                    s.arn
                ),
                evidence: vec!["GetResourcePolicy: none".into()],
                fix: "natctl setup --lambda FUNCTION --secret SECRET --secret-policy role (only the execution role, and a rotation function, may read it; admins keep managing it)".into(),
            });
        }
        if !s.rotation {
            out.push(Finding {
                severity: Severity::Advice,
                check: "secret_rotation_off",
                resource: s.arn.clone(),
                problem: format!(
                    "secret {} does not rotate{}: a leaked password stays valid until someone changes it",
                    s.arn,
                    s.last_rotated.as_ref().map(|d| format!(" (last rotated {d})")).unwrap_or_else(|| " (never rotated)".into())
                ),
                evidence: vec!["RotationEnabled=false".into()],
                fix: format!("aws secretsmanager rotate-secret --secret-id {} --rotation-rules AutomaticallyAfterDays=30 --rotation-lambda-arn ROTATION_FUNCTION (RDS: --manage-master-user-password)", s.arn),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
