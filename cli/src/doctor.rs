//! `natctl doctor --vpc VPC [--lambda FUNCTION]`: the mistakes of the VPC-Lambda story,
//! found in any VPC (natctl-built or not), each told in a plain sentence with its fix.
//! [`diagnose`] decides from [`Facts`] without I/O; [`read`] gathers them.

use crate::aws::names::filter;
use crate::aws::read::{self, Associations};
use crate::aws::{Clients, Error, err, found};
use crate::parts::lambda::ENI_ACTIONS;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// One rule of a security group: (protocol, from, to, source group or CIDR).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    /// `tcp`, `udp`, `-1`.
    pub protocol: String,
    /// First port (-1 for all).
    pub from: i32,
    /// Last port.
    pub to: i32,
    /// Source security group.
    pub group: Option<String>,
    /// Source CIDR.
    pub cidr: Option<String>,
}

impl Rule {
    fn covers(&self, port: i32) -> bool {
        self.protocol == "-1" || (self.protocol == "tcp" && self.from <= port && port <= self.to)
    }
}

/// A route table's default route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Default {
    /// Target id (`nat-`, `i-`, `eni-`, `igw-`, ...).
    pub target: String,
    /// `active` or `blackhole`.
    pub state: String,
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
    /// The statements of the role's policies (inline and attached).
    pub statements: Vec<serde_json::Value>,
}

/// Everything the diagnosis looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The VPC.
    pub vpc: String,
    /// Its CIDRs.
    pub cidrs: Vec<String>,
    /// subnet -> AZ.
    pub subnet_az: BTreeMap<String, String>,
    /// subnet -> the table it routes by.
    pub subnet_table: BTreeMap<String, String>,
    /// table -> its default route.
    pub defaults: BTreeMap<String, Option<Default>>,
    /// NAT gateway -> its AZ.
    pub gateway_az: BTreeMap<String, String>,
    /// Instance or ENI ids that are default-route targets -> source/dest check on.
    pub source_dest_check: BTreeMap<String, bool>,
    /// Interface endpoints: (id, service, private DNS, groups).
    pub endpoints: Vec<(String, String, bool, Vec<String>)>,
    /// Security group -> (name, ingress rules).
    pub groups: BTreeMap<String, (String, Vec<Rule>)>,
    /// DB instance -> its security groups.
    pub databases: BTreeMap<String, Vec<String>>,
    /// The VPC functions looked at.
    pub functions: Vec<Function>,
}

/// One mistake found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Which check (stable key).
    pub check: &'static str,
    /// The resource at fault.
    pub resource: String,
    /// What is wrong, in a sentence.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

fn is_nat_target(t: &str) -> bool {
    t.starts_with("nat-") || t.starts_with("i-") || t.starts_with("eni-")
}

/// The mistakes in `f`.
pub fn diagnose(f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    let sm_endpoints: Vec<&(String, String, bool, Vec<String>)> = f
        .endpoints
        .iter()
        .filter(|e| e.1.ends_with(".secretsmanager"))
        .collect();
    for func in &f.functions {
        // 1. A VPC function with neither NAT egress nor the endpoint it needs.
        let no_nat: Vec<&String> = func
            .subnets
            .iter()
            .filter(|s| {
                let d = f
                    .subnet_table
                    .get(*s)
                    .and_then(|t| f.defaults.get(t))
                    .cloned()
                    .flatten();
                !d.is_some_and(|d| d.state == "active" && is_nat_target(&d.target))
            })
            .collect();
        if !no_nat.is_empty() && sm_endpoints.is_empty() {
            out.push(Finding {
                check: "no_egress",
                resource: func.name.clone(),
                problem: format!(
                    "function {} runs in subnet(s) {} that have no working route to a NAT, and the VPC has no Secrets Manager endpoint: its calls to Secrets Manager (and the internet) time out",
                    func.name,
                    no_nat.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
                fix: "run `natctl setup --env dev|prod --vpc VPC --lambda FUNCTION --secret SECRET`, or add a 0.0.0.0/0 route to a NAT gateway and a com.amazonaws.REGION.secretsmanager interface endpoint".into(),
            });
        }
        // 3. The Secrets Manager endpoint does not admit the function.
        for (id, _, _, groups) in &sm_endpoints {
            let admitted = groups.iter().any(|g| {
                f.groups.get(g).is_some_and(|(_, rules)| {
                    rules.iter().any(|r| {
                        r.covers(443)
                            && (r
                                .group
                                .as_ref()
                                .is_some_and(|src| func.groups.contains(src))
                                || r.cidr.as_deref() == Some("0.0.0.0/0")
                                || r.cidr.as_ref().is_some_and(|c| f.cidrs.contains(c)))
                    })
                })
            });
            if !admitted {
                out.push(Finding {
                    check: "endpoint_sg_not_admitting_lambda",
                    resource: id.clone(),
                    problem: format!(
                        "the security groups of Secrets Manager endpoint {id} do not admit HTTPS from function {}'s security group(s) {}: GetSecretValue times out",
                        func.name,
                        func.groups.join(", ")
                    ),
                    fix: format!(
                        "allow TCP 443 from {} on the endpoint's security group (natctl setup --lambda does)",
                        func.groups.first().map(String::as_str).unwrap_or("the function's security group")
                    ),
                });
            }
        }
        // 8. Wildcards in the execution role.
        for s in &func.statements {
            if s["Effect"] != "Allow" {
                continue;
            }
            let list = |v: &serde_json::Value| -> Vec<String> {
                match v {
                    serde_json::Value::String(x) => vec![x.clone()],
                    serde_json::Value::Array(xs) => xs
                        .iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                    _ => vec![],
                }
            };
            let actions = list(&s["Action"]);
            let resources = list(&s["Resource"]);
            let wild_action = actions.iter().find(|a| *a == "*" || a.ends_with(":*"));
            let wild_resource = resources.iter().any(|r| r == "*")
                && actions
                    .iter()
                    .any(|a| !ENI_ACTIONS.contains(&a.as_str()) && !a.starts_with("ec2:Describe"));
            if wild_action.is_some() || wild_resource {
                out.push(Finding {
                    check: "wildcard_role",
                    resource: func.role.clone(),
                    problem: format!(
                        "execution role {} of function {} allows {} on {}",
                        func.role,
                        func.name,
                        actions.join(", "),
                        resources.join(", ")
                    ),
                    fix: "grant only what the function uses: secretsmanager:GetSecretValue on its secret's ARN, the network-interface actions, its own log group (natctl setup --lambda writes that policy)".into(),
                });
            }
        }
    }
    // 2. Endpoints without private DNS.
    for (id, service, dns, _) in &f.endpoints {
        if !dns {
            out.push(Finding {
                check: "endpoint_without_private_dns",
                resource: id.clone(),
                problem: format!(
                    "interface endpoint {id} ({service}) has private DNS off: the SDK resolves the public name and goes through NAT or fails"
                ),
                fix: format!("aws ec2 modify-vpc-endpoint --vpc-endpoint-id {id} --private-dns-enabled"),
            });
        }
    }
    // 4. Database security groups open to the world or the whole VPC.
    let mut db_groups: BTreeSet<&String> = f.databases.values().flatten().collect();
    db_groups.extend(
        f.groups
            .iter()
            .filter(|(_, (name, _))| name.ends_with("-database"))
            .map(|(id, _)| id),
    );
    for g in db_groups {
        let Some((name, rules)) = f.groups.get(g) else {
            continue;
        };
        for r in rules {
            let Some(cidr) = &r.cidr else { continue };
            if cidr == "0.0.0.0/0" || f.cidrs.contains(cidr) {
                out.push(Finding {
                    check: "database_sg_open",
                    resource: g.clone(),
                    problem: format!(
                        "database security group {g} ({name}) admits {cidr}{}",
                        if cidr == "0.0.0.0/0" { " (anyone)" } else { " (the whole VPC)" }
                    ),
                    fix: format!("replace that rule with one admitting the database port from the Lambda function's security group only (aws ec2 revoke-security-group-ingress --group-id {g} ...)"),
                });
            }
        }
    }
    // 5. Blackhole default routes.
    for (table, d) in &f.defaults {
        if let Some(d) = d.as_ref().filter(|d| d.state == "blackhole") {
            out.push(Finding {
                check: "blackhole_route",
                resource: table.clone(),
                problem: format!(
                    "route table {table} sends 0.0.0.0/0 to {}, which no longer exists (blackhole): its subnets have no egress",
                    d.target
                ),
                fix: "point it at a live NAT (natd does this by itself for tables tagged natd:egress; natctl status shows the stack)".into(),
            });
        }
    }
    // 6. A NAT instance with source/dest check on.
    for (id, on) in &f.source_dest_check {
        if *on {
            out.push(Finding {
                check: "source_dest_check_on",
                resource: id.clone(),
                problem: format!(
                    "{id} is a NAT route target but has source/dest check on: EC2 drops the traffic it forwards"
                ),
                fix: format!(
                    "aws ec2 modify-network-interface-attribute --network-interface-id ENI --no-source-dest-check for {id}'s ENI (natd does this at start)"
                ),
            });
        }
    }
    // 7. One NAT gateway serving several AZs.
    let mut served: BTreeMap<&String, BTreeSet<&String>> = BTreeMap::new();
    for (subnet, table) in &f.subnet_table {
        if let Some(Some(d)) = f.defaults.get(table)
            && f.gateway_az.contains_key(&d.target)
            && let Some(az) = f.subnet_az.get(subnet)
        {
            served.entry(&d.target).or_default().insert(az);
        }
    }
    for (gw, azs) in served {
        if azs.len() > 1 {
            out.push(Finding {
                check: "one_nat_for_several_azs",
                resource: gw.clone(),
                problem: format!(
                    "NAT gateway {gw} in {} serves private subnets in {}: when its AZ fails they all lose egress, and cross-AZ traffic is billed",
                    f.gateway_az.get(gw).map(String::as_str).unwrap_or("?"),
                    azs.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
                ),
                fix: "one NAT gateway per AZ with AZ-local routes: natctl setup --env prod".into(),
            });
        }
    }
    out
}

/// Why doctor cannot run.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// No such VPC.
    #[error("VPC {0} not found")]
    NoVpc(String),
    /// No such function.
    #[error("Lambda function {0} not found")]
    NoFunction(String),
    /// A call failed.
    #[error(transparent)]
    Api(#[from] Error),
}

fn rules(perms: &[aws_sdk_ec2::types::IpPermission]) -> Vec<Rule> {
    let mut out = Vec::new();
    for p in perms {
        let base = Rule {
            protocol: p.ip_protocol().unwrap_or("-1").to_string(),
            from: p.from_port().unwrap_or(-1),
            to: p.to_port().unwrap_or(-1),
            group: None,
            cidr: None,
        };
        for g in p.user_id_group_pairs() {
            out.push(Rule {
                group: g.group_id().map(str::to_string),
                ..base.clone()
            });
        }
        for r in p.ip_ranges() {
            out.push(Rule {
                cidr: r.cidr_ip().map(str::to_string),
                ..base.clone()
            });
        }
    }
    out
}

/// Statements of a role's inline and attached policies.
async fn role_statements(c: &Clients, role: &str) -> Result<Vec<serde_json::Value>, Error> {
    let mut docs = Vec::new();
    let inline = c
        .iam
        .list_role_policies()
        .role_name(role)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await;
    for p in found(inline, "ListRolePolicies", role)?.unwrap_or_default() {
        docs.extend(read::role_policy(c, role, &p).await?);
    }
    let attached = c
        .iam
        .list_attached_role_policies()
        .role_name(role)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await;
    for p in found(attached, "ListAttachedRolePolicies", role)?.unwrap_or_default() {
        let arn = p.policy_arn().unwrap_or_default();
        let pol = c
            .iam
            .get_policy()
            .policy_arn(arn)
            .send()
            .await
            .map_err(err("GetPolicy", arn))?;
        let version = pol
            .policy()
            .and_then(|p| p.default_version_id())
            .unwrap_or("v1");
        let v = c
            .iam
            .get_policy_version()
            .policy_arn(arn)
            .version_id(version)
            .send()
            .await
            .map_err(err("GetPolicyVersion", arn))?;
        if let Some(d) = v
            .policy_version()
            .and_then(|v| v.document())
            .and_then(read::decode_policy)
        {
            docs.push(d);
        }
    }
    let mut out = Vec::new();
    for v in docs {
        match &v["Statement"] {
            serde_json::Value::Array(xs) => out.extend(xs.iter().cloned()),
            s @ serde_json::Value::Object(_) => out.push(s.clone()),
            _ => {}
        }
    }
    Ok(out)
}

/// Gathers the facts of `vpc` (and of `function`, or of every function in the VPC).
pub async fn read(c: &Clients, vpc: &str, function: Option<&str>) -> Result<Facts, Invalid> {
    let in_vpc = || vec![filter("vpc-id", &[vpc])];
    let mut f = Facts {
        vpc: vpc.to_string(),
        ..Facts::default()
    };
    let v = c
        .ec2
        .describe_vpcs()
        .filters(filter("vpc-id", &[vpc]))
        .send()
        .await
        .map_err(err("DescribeVpcs", vpc))?;
    let Some(v) = v.vpcs().first() else {
        return Err(Invalid::NoVpc(vpc.to_string()));
    };
    f.cidrs = v
        .cidr_block_association_set()
        .iter()
        .filter_map(|a| a.cidr_block().map(str::to_string))
        .chain(v.cidr_block().map(str::to_string))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for s in read::subnets(c, in_vpc(), vpc).await? {
        f.subnet_az.insert(
            s.subnet_id().unwrap_or_default().to_string(),
            s.availability_zone().unwrap_or_default().to_string(),
        );
    }
    let tables = read::vpc_tables(c, vpc).await?;
    let associations = Associations::from_tables(&tables);
    for s in f.subnet_az.keys() {
        if let Some(t) = associations.table_of(s) {
            f.subnet_table.insert(s.clone(), t.to_string());
        }
    }
    for t in &tables {
        let d = natd::aws::default_route(t).map(|r| Default {
            target: natd::aws::route_target(r).unwrap_or_default().to_string(),
            state: r
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
        });
        f.defaults
            .insert(t.route_table_id().unwrap_or_default().to_string(), d);
    }
    for g in read::nat_gateways(c, in_vpc(), vpc).await? {
        if g.state().is_some_and(|s| s.as_str() == "deleted") {
            continue;
        }
        let az = g
            .subnet_id()
            .and_then(|s| f.subnet_az.get(s))
            .cloned()
            .unwrap_or_default();
        f.gateway_az
            .insert(g.nat_gateway_id().unwrap_or_default().to_string(), az);
    }
    // Source/dest check of every instance or ENI a default route points at (the ENI's
    // flag: it is the one EC2 enforces).
    let targets: BTreeSet<String> = f
        .defaults
        .values()
        .flatten()
        .filter(|d| d.state == "active")
        .map(|d| d.target.clone())
        .filter(|t| t.starts_with("i-") || t.starts_with("eni-"))
        .collect();
    for t in targets {
        let req = c.ec2.describe_network_interfaces();
        let req = if t.starts_with("i-") {
            req.filters(filter("attachment.instance-id", &[&t]))
        } else {
            req.network_interface_ids(&t)
        };
        let r = req
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await;
        if let Some(enis) = found(r, "DescribeNetworkInterfaces", &t)? {
            let on = enis.iter().any(|n| n.source_dest_check() == Some(true));
            f.source_dest_check.insert(t, on);
        }
    }
    for e in read::vpc_endpoints(c, in_vpc(), vpc).await? {
        if e.vpc_endpoint_type()
            .is_some_and(|t| t.as_str() != "Interface")
        {
            continue;
        }
        f.endpoints.push((
            e.vpc_endpoint_id().unwrap_or_default().to_string(),
            e.service_name().unwrap_or_default().to_string(),
            e.private_dns_enabled().unwrap_or(false),
            e.groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_string))
                .collect(),
        ));
    }
    for g in read::security_groups(c, in_vpc(), vpc).await? {
        f.groups.insert(
            g.group_id().unwrap_or_default().to_string(),
            (
                g.group_name().unwrap_or_default().to_string(),
                rules(g.ip_permissions()),
            ),
        );
    }
    let dbs = c
        .rds
        .describe_db_instances()
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(err("DescribeDBInstances", vpc))?;
    for d in dbs {
        if d.db_subnet_group().and_then(|g| g.vpc_id()) != Some(vpc) {
            continue;
        }
        f.databases.insert(
            d.db_instance_identifier().unwrap_or_default().to_string(),
            d.vpc_security_groups()
                .iter()
                .filter_map(|g| g.vpc_security_group_id().map(str::to_string))
                .collect(),
        );
    }
    // The functions: the one named, else every function with a subnet in the VPC.
    let configs: Vec<aws_sdk_lambda::types::FunctionConfiguration> = match function {
        Some(name) => {
            let r = found(
                c.lambda.get_function().function_name(name).send().await,
                "GetFunction",
                name,
            )?
            .ok_or_else(|| Invalid::NoFunction(name.to_string()))?;
            r.configuration().cloned().into_iter().collect()
        }
        None => c
            .lambda
            .list_functions()
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(err("ListFunctions", vpc))?,
    };
    for conf in configs {
        let subnets: Vec<String> = conf
            .vpc_config()
            .map(|v| v.subnet_ids().to_vec())
            .unwrap_or_default();
        if function.is_none() && !subnets.iter().any(|s| f.subnet_az.contains_key(s)) {
            continue;
        }
        let role_arn = conf.role().unwrap_or_default();
        let role = role_arn.rsplit('/').next().unwrap_or_default().to_string();
        f.functions.push(Function {
            name: conf.function_name().unwrap_or_default().to_string(),
            subnets,
            groups: conf
                .vpc_config()
                .map(|v| v.security_group_ids().to_vec())
                .unwrap_or_default(),
            statements: role_statements(c, &role).await?,
            role,
        });
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_vpc_has_no_findings_and_each_mistake_is_named() {
        let mut f = Facts {
            vpc: "vpc-1".into(),
            cidrs: vec!["10.0.0.0/16".into()],
            subnet_az: [
                ("s-a".to_string(), "a".to_string()),
                ("s-b".to_string(), "b".to_string()),
            ]
            .into(),
            subnet_table: [
                ("s-a".to_string(), "rtb-a".to_string()),
                ("s-b".to_string(), "rtb-b".to_string()),
            ]
            .into(),
            defaults: [
                (
                    "rtb-a".to_string(),
                    Some(Default {
                        target: "nat-a".into(),
                        state: "active".into(),
                    }),
                ),
                (
                    "rtb-b".to_string(),
                    Some(Default {
                        target: "nat-b".into(),
                        state: "active".into(),
                    }),
                ),
            ]
            .into(),
            gateway_az: [
                ("nat-a".to_string(), "a".to_string()),
                ("nat-b".to_string(), "b".to_string()),
            ]
            .into(),
            ..Facts::default()
        };
        assert_eq!(diagnose(&f), vec![]);
        // rtb-b now uses AZ a's gateway.
        f.defaults.insert(
            "rtb-b".into(),
            Some(Default {
                target: "nat-a".into(),
                state: "active".into(),
            }),
        );
        let found: Vec<&str> = diagnose(&f).iter().map(|x| x.check).collect();
        assert_eq!(found, vec!["one_nat_for_several_azs"]);
    }
}
