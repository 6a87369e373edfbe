//! Gathers doctor's [`Facts`] from EC2, RDS, Lambda, IAM and Secrets Manager, and the
//! region's CloudTrail, GuardDuty and Service Quotas. Reads only; every list call goes
//! through a paginator.

use super::net::{AclEntry, Peer, Proto, Route, Rule};
use super::{
    Database, Endpoint, Facts, Function, Gateway, Group, NATD_START_WINDOW_SECS, NatHost,
    RegionFacts, Secret, Subnet, iam,
};
use crate::aws::names::{filter, tag_value};
use crate::aws::read::{self, Associations};
use crate::aws::{Clients, Error, err, found};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};

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

fn port(p: Option<i32>, default: u16) -> u16 {
    p.and_then(|x| u16::try_from(x).ok()).unwrap_or(default)
}

fn rules(perms: &[aws_sdk_ec2::types::IpPermission]) -> Vec<Rule> {
    let mut out = Vec::new();
    for p in perms {
        let proto = Proto::parse(p.ip_protocol().unwrap_or("-1"));
        let ports = (port(p.from_port(), 0), port(p.to_port(), 65535));
        let mut add = |peer: Peer| out.push(Rule { proto, ports, peer });
        for g in p.user_id_group_pairs() {
            if let Some(id) = g.group_id() {
                add(Peer::Group(id.to_string()));
            }
        }
        for r in p.ip_ranges() {
            if let Some(c) = r.cidr_ip().and_then(|c| c.parse::<IpNet>().ok()) {
                add(Peer::Cidr(c));
            }
        }
        for r in p.ipv6_ranges() {
            if let Some(c) = r.cidr_ipv6().and_then(|c| c.parse::<IpNet>().ok()) {
                add(Peer::Cidr(c));
            }
        }
        for l in p.prefix_list_ids() {
            if let Some(id) = l.prefix_list_id() {
                add(Peer::PrefixList(id.to_string()));
            }
        }
    }
    out
}

fn decode(doc: &str) -> Vec<serde_json::Value> {
    read::decode_policy(doc)
        .map(|v| iam::statements(&v))
        .unwrap_or_default()
}

async fn managed_policy(c: &Clients, arn: &str) -> Result<Vec<serde_json::Value>, Error> {
    let Some(pol) = found(
        c.iam.get_policy().policy_arn(arn).send().await,
        "GetPolicy",
        arn,
    )?
    else {
        return Ok(vec![]);
    };
    let version = pol
        .policy()
        .and_then(|p| p.default_version_id())
        .unwrap_or("v1");
    let v = found(
        c.iam
            .get_policy_version()
            .policy_arn(arn)
            .version_id(version)
            .send()
            .await,
        "GetPolicyVersion",
        arn,
    )?;
    Ok(
        v.and_then(|v| v.policy_version().and_then(|v| v.document()).map(decode))
            .unwrap_or_default(),
    )
}

/// Statements of a role's inline and attached policies, and of its permissions
/// boundary.
async fn role_statements(
    c: &Clients,
    role: &str,
) -> Result<(Vec<serde_json::Value>, Option<Vec<serde_json::Value>>), Error> {
    let mut out = Vec::new();
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
        if let Some(d) = read::role_policy(c, role, &p).await? {
            out.extend(iam::statements(&d));
        }
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
        out.extend(managed_policy(c, p.policy_arn().unwrap_or_default()).await?);
    }
    let boundary = found(
        c.iam.get_role().role_name(role).send().await,
        "GetRole",
        role,
    )?
    .and_then(|r| {
        r.role()
            .and_then(|r| r.permissions_boundary())
            .and_then(|b| b.permissions_boundary_arn())
            .map(str::to_string)
    });
    let boundary = match boundary {
        Some(arn) => Some(managed_policy(c, &arn).await?),
        None => None,
    };
    Ok((out, boundary))
}

async fn vpc_dns(c: &Clients, vpc: &str) -> Result<(bool, bool), Error> {
    use aws_sdk_ec2::types::VpcAttributeName;
    let support = c
        .ec2
        .describe_vpc_attribute()
        .vpc_id(vpc)
        .attribute(VpcAttributeName::EnableDnsSupport)
        .send()
        .await
        .map_err(err("DescribeVpcAttribute", vpc))?;
    let hostnames = c
        .ec2
        .describe_vpc_attribute()
        .vpc_id(vpc)
        .attribute(VpcAttributeName::EnableDnsHostnames)
        .send()
        .await
        .map_err(err("DescribeVpcAttribute", vpc))?;
    Ok((
        support.enable_dns_support().and_then(|v| v.value()) == Some(true),
        hostnames.enable_dns_hostnames().and_then(|v| v.value()) == Some(true),
    ))
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
        .filter(|a| {
            a.cidr_block_state()
                .and_then(|s| s.state())
                .is_none_or(|s| s.as_str() == "associated")
        })
        .filter_map(|a| a.cidr_block())
        .chain(v.cidr_block())
        .filter_map(|c| c.parse().ok())
        .collect::<BTreeSet<IpNet>>()
        .into_iter()
        .collect();
    (f.dns_support, f.dns_hostnames) = vpc_dns(c, vpc).await?;
    let tables = read::vpc_tables(c, vpc).await?;
    // Without permission to read launch templates, doctor attributes tables by their
    // tag only (as before templates could name them).
    let named = named_tables(c).await.unwrap_or_default();
    let associations = Associations::from_tables(&tables);
    for t in &tables {
        let routes = t
            .routes()
            .iter()
            .map(|r| Route {
                dest: r
                    .destination_cidr_block()
                    .or(r.destination_ipv6_cidr_block())
                    .and_then(|d| d.parse().ok()),
                target: natd::aws::route_target(r)
                    .or(r.egress_only_internet_gateway_id())
                    .or(r.gateway_id())
                    .or(r.transit_gateway_id())
                    .or(r.vpc_peering_connection_id())
                    .unwrap_or("unknown")
                    .to_string(),
                state: r
                    .state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|| "active".into()),
            })
            .collect();
        f.tables
            .insert(t.route_table_id().unwrap_or_default().to_string(), routes);
    }
    // Tables a natd of a just-launched NAT instance is about to take.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    for t in &tables {
        let Some(stack) = table_stack(t, &named) else {
            continue;
        };
        let young = read::stack_instances(c, stack)
            .await?
            .into_iter()
            .filter(|i| {
                i.state()
                    .and_then(|s| s.name())
                    .is_some_and(|n| matches!(n.as_str(), "pending" | "running"))
            })
            .filter(|i| {
                i.launch_time()
                    .is_some_and(|l| now - l.secs() < NATD_START_WINDOW_SECS)
            })
            .max_by_key(|i| i.launch_time().map(|l| l.secs()).unwrap_or(0));
        if let Some(i) = young {
            f.natd_pending.insert(
                t.route_table_id().unwrap_or_default().to_string(),
                i.instance_id().unwrap_or_default().to_string(),
            );
        }
    }
    f.pairs = pairs(c, &tables, &named).await?;
    f.stack_alarms = stack_alarms(c, &tables, &named).await;
    let acls = c
        .ec2
        .describe_network_acls()
        .set_filters(Some(in_vpc()))
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(err("DescribeNetworkAcls", vpc))?;
    let mut acl_of = std::collections::BTreeMap::new();
    let mut default_acl = None;
    for a in &acls {
        let id = a.network_acl_id().unwrap_or_default().to_string();
        if a.is_default() == Some(true) {
            default_acl = Some(id.clone());
        }
        for x in a.associations() {
            if let Some(s) = x.subnet_id() {
                acl_of.insert(s.to_string(), id.clone());
            }
        }
        let entries = a
            .entries()
            .iter()
            .filter_map(|e| {
                Some(AclEntry {
                    number: e.rule_number()?,
                    egress: e.egress()?,
                    proto: Proto::parse(e.protocol()?),
                    ports: e
                        .port_range()
                        .map(|p| (port(p.from(), 0), port(p.to(), 65535))),
                    cidr: e
                        .cidr_block()
                        .or(e.ipv6_cidr_block())
                        .and_then(|c| c.parse().ok())?,
                    allow: e.rule_action().map(|r| r.as_str()) == Some("allow"),
                })
            })
            .collect();
        f.acls.insert(id, entries);
    }
    for s in read::subnets(c, in_vpc(), vpc).await? {
        let id = s.subnet_id().unwrap_or_default().to_string();
        let Some(cidr) = s.cidr_block().and_then(|c| c.parse().ok()) else {
            continue;
        };
        f.subnets.insert(
            id.clone(),
            Subnet {
                az: s.availability_zone().unwrap_or_default().to_string(),
                cidr,
                table: associations.table_of(&id).map(str::to_string),
                acl: acl_of.get(&id).cloned().or(default_acl.clone()),
                ipv6: crate::parts::ipv6::subnet_ipv6(&s).and_then(|(_, b)| b.parse().ok()),
            },
        );
    }
    let igws = c
        .ec2
        .describe_internet_gateways()
        .filters(filter("attachment.vpc-id", &[vpc]))
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(err("DescribeInternetGateways", vpc))?;
    f.igws = igws
        .iter()
        .filter(|g| {
            g.attachments().iter().any(|a| {
                a.vpc_id() == Some(vpc)
                    && a.state()
                        .is_none_or(|s| matches!(s.as_str(), "available" | "attached"))
            })
        })
        .filter_map(|g| g.internet_gateway_id().map(str::to_string))
        .collect();
    for g in read::nat_gateways(c, in_vpc(), vpc).await? {
        let state = g
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        if state == "deleted" {
            continue;
        }
        f.gateways.insert(
            g.nat_gateway_id().unwrap_or_default().to_string(),
            Gateway {
                subnet: g.subnet_id().unwrap_or_default().to_string(),
                regional: g
                    .availability_mode()
                    .is_some_and(|m| m.as_str() == "regional"),
                state,
                public: g
                    .connectivity_type()
                    .is_none_or(|t| t.as_str() != "private"),
            },
        );
    }
    // The network interface of every instance or ENI a route sends the internet to.
    let targets: BTreeSet<String> = f
        .tables
        .values()
        .flatten()
        .filter(|r| r.state == "active")
        .map(|r| r.target.clone())
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
        let Some(mut enis) = found(r, "DescribeNetworkInterfaces", &t)? else {
            continue;
        };
        enis.sort_by_key(|n| n.attachment().and_then(|a| a.device_index()).unwrap_or(0));
        if let Some(n) = enis.first() {
            f.nat_hosts.insert(
                t,
                NatHost {
                    eni: n.network_interface_id().unwrap_or_default().to_string(),
                    subnet: n.subnet_id().unwrap_or_default().to_string(),
                    source_dest_check: n.source_dest_check() == Some(true),
                    groups: n
                        .groups()
                        .iter()
                        .filter_map(|g| g.group_id().map(str::to_string))
                        .collect(),
                    public_ip: n.association().and_then(|a| a.public_ip()).is_some()
                        || n.private_ip_addresses()
                            .iter()
                            .any(|p| p.association().and_then(|a| a.public_ip()).is_some()),
                },
            );
        }
    }
    for e in read::vpc_endpoints(c, in_vpc(), vpc).await? {
        if e.vpc_endpoint_type()
            .is_some_and(|t| t.as_str() != "Interface")
        {
            continue;
        }
        f.endpoints.push(Endpoint {
            id: e.vpc_endpoint_id().unwrap_or_default().to_string(),
            service: e.service_name().unwrap_or_default().to_string(),
            private_dns: e.private_dns_enabled().unwrap_or(false),
            dns_ipv6_only: e
                .dns_options()
                .and_then(|d| d.dns_record_ip_type())
                .is_some_and(|t| t.as_str() == "ipv6"),
            groups: e
                .groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_string))
                .collect(),
            subnets: e.subnet_ids().to_vec(),
            policy: e
                .policy_document()
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .map(|d| iam::statements(&d)),
        });
    }
    for g in read::security_groups(c, in_vpc(), vpc).await? {
        f.groups.insert(
            g.group_id().unwrap_or_default().to_string(),
            Group {
                name: g.group_name().unwrap_or_default().to_string(),
                ingress: rules(g.ip_permissions()),
                egress: rules(g.ip_permissions_egress()),
            },
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
        let Some(group) = d.db_subnet_group().filter(|g| g.vpc_id() == Some(vpc)) else {
            continue;
        };
        if d.db_instance_status().is_some_and(|s| s == "deleting") {
            continue;
        }
        f.databases.push(Database {
            id: d.db_instance_identifier().unwrap_or_default().to_string(),
            port: port(
                d.endpoint()
                    .and_then(|e| e.port())
                    .or(d.db_instance_port())
                    .filter(|p| *p > 0),
                5432,
            ),
            groups: d
                .vpc_security_groups()
                .iter()
                .filter_map(|g| g.vpc_security_group_id().map(str::to_string))
                .collect(),
            subnets: group
                .subnets()
                .iter()
                .filter_map(|s| s.subnet_identifier().map(str::to_string))
                .collect(),
            az: d.availability_zone().map(str::to_string),
            public: d.publicly_accessible() == Some(true),
            backup_days: d.backup_retention_period().unwrap_or(0),
            multi_az: d.multi_az() == Some(true),
            max_connections: d
                .engine()
                .zip(d.db_instance_class())
                .and_then(|(e, c)| super::capacity::default_max_connections(e, c)),
            latest_restorable: d
                .latest_restorable_time()
                .and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok()),
        });
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
    let mut account_concurrency = None;
    for conf in configs {
        let subnets: Vec<String> = conf
            .vpc_config()
            .map(|v| v.subnet_ids().to_vec())
            .unwrap_or_default();
        if function.is_none() && !subnets.iter().any(|s| f.subnets.contains_key(s)) {
            continue;
        }
        let role_arn = conf.role().unwrap_or_default().to_string();
        let role = role_arn.rsplit('/').next().unwrap_or_default().to_string();
        let (statements, boundary) = role_statements(c, &role).await?;
        let name = conf.function_name().unwrap_or_default().to_string();
        let concurrency = function_concurrency(c, &name, &mut account_concurrency).await;
        f.functions.push(Function {
            concurrency,
            name: conf.function_name().unwrap_or_default().to_string(),
            subnets,
            groups: conf
                .vpc_config()
                .map(|v| v.security_group_ids().to_vec())
                .unwrap_or_default(),
            statements,
            boundary,
            role,
            role_arn,
            ipv6: conf
                .vpc_config()
                .and_then(|v| v.ipv6_allowed_for_dual_stack())
                .unwrap_or(false),
        });
    }
    // The secrets the roles name.
    let arns: BTreeSet<String> = f
        .functions
        .iter()
        .flat_map(|x| &x.statements)
        .filter(|s| s["Effect"] == "Allow")
        .flat_map(|s| iam::strings(&s["Resource"]))
        .filter(|r| r.starts_with("arn:aws:secretsmanager:") && !r.contains(['*', '?']))
        .collect();
    for arn in arns {
        let Some(d) = found(
            c.secrets.describe_secret().secret_id(&arn).send().await,
            "DescribeSecret",
            &arn,
        )?
        else {
            continue;
        };
        let policy = found(
            c.secrets.get_resource_policy().secret_id(&arn).send().await,
            "GetResourcePolicy",
            &arn,
        )?
        .and_then(|p| p.resource_policy().map(decode))
        .unwrap_or_default();
        f.secrets.insert(
            arn.clone(),
            Secret {
                arn,
                rotation: d.rotation_enabled() == Some(true),
                last_rotated: d
                    .last_rotated_date()
                    .and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok()),
                policy,
            },
        );
    }
    let subnets: Vec<String> = f.subnets.keys().cloned().collect();
    f.region = region_facts(c, vpc, &subnets).await;
    Ok(f)
}

/// The account's logging and capacity in the region. Each read that fails (no
/// permission, a service not offered) leaves its fact unknown: doctor says nothing
/// about what it could not see.
async fn region_facts(c: &Clients, vpc: &str, subnets: &[String]) -> RegionFacts {
    let mut r = RegionFacts::default();
    let mut ids = vec![vpc];
    ids.extend(subnets.iter().map(String::as_str));
    if let Ok(fl) = c
        .ec2
        .describe_flow_logs()
        .filter(filter("resource-id", &ids))
        .send()
        .await
    {
        let logged: BTreeSet<&str> = fl
            .flow_logs()
            .iter()
            .filter(|l| l.flow_log_status().is_none_or(|s| s == "ACTIVE"))
            .filter_map(|l| l.resource_id())
            .collect();
        r.flow_logs = Some(
            logged.contains(vpc)
                || (!subnets.is_empty() && subnets.iter().all(|s| logged.contains(s.as_str()))),
        );
    }
    if let Ok(t) = c
        .cloudtrail
        .describe_trails()
        .include_shadow_trails(true)
        .send()
        .await
    {
        let mut logging = false;
        for trail in t.trail_list() {
            let Some(arn) = trail.trail_arn() else {
                continue;
            };
            if let Ok(s) = c.cloudtrail.get_trail_status().name(arn).send().await
                && s.is_logging() == Some(true)
            {
                logging = true;
                break;
            }
        }
        r.trail_logging = Some(logging);
    }
    if let Ok(d) = c.guardduty.list_detectors().send().await {
        let mut enabled = false;
        for id in d.detector_ids() {
            if let Ok(g) = c.guardduty.get_detector().detector_id(id).send().await
                && g.status().is_some_and(|s| s.as_str() == "ENABLED")
            {
                enabled = true;
                break;
            }
        }
        r.guardduty = Some(enabled);
    }
    let quota = match c
        .quotas
        .get_service_quota()
        .service_code("vpc")
        .quota_code("L-DF5E4CA3")
        .send()
        .await
    {
        Ok(q) => q.quota().and_then(|q| q.value()),
        Err(_) => c
            .quotas
            .get_aws_default_service_quota()
            .service_code("vpc")
            .quota_code("L-DF5E4CA3")
            .send()
            .await
            .ok()
            .and_then(|q| q.quota().and_then(|q| q.value())),
    };
    if let Some(quota) = quota {
        let used = c
            .ec2
            .describe_network_interfaces()
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await;
        if let Ok(used) = used {
            r.enis = Some((used.len() as u64, quota.max(0.0) as u64));
        }
    }
    r
}

/// How many copies of `function` can run at once: its reserved concurrency, else the
/// account's unreserved concurrency (read once, into `account`); `None` when Lambda
/// answers neither.
async fn function_concurrency(
    c: &Clients,
    function: &str,
    account: &mut Option<Option<u64>>,
) -> Option<(u64, String)> {
    if let Ok(r) = c
        .lambda
        .get_function_concurrency()
        .function_name(function)
        .send()
        .await
        && let Some(n) = r.reserved_concurrent_executions()
    {
        return Some((n.max(0) as u64, "its reserved concurrency".into()));
    }
    if account.is_none() {
        *account = Some(
            c.lambda
                .get_account_settings()
                .send()
                .await
                .ok()
                .and_then(|s| s.account_limit()?.unreserved_concurrent_executions())
                .map(|n| n.max(0) as u64),
        );
    }
    account.flatten().map(|n| {
        (
            n,
            "no reserved concurrency: the account's unreserved concurrency".into(),
        )
    })
}

/// The alarms of the NAT-instance stacks whose tables are tagged in the VPC; a stack
/// whose alarms CloudWatch does not show (no permission) has `None`.
/// The tables natd stacks name in their boot configuration (a template's stacks, which
/// cannot tag them): table -> stack.
async fn named_tables(c: &Clients) -> Result<BTreeMap<String, String>, Error> {
    Ok(read::boot_configs(c)
        .await?
        .into_iter()
        .flat_map(|(stack, b)| b.route_tables.into_iter().map(move |t| (t, stack.clone())))
        .collect())
}

/// The natd stack that takes over `t`: by its `natd:egress` tag, or by a stack's boot
/// configuration naming it.
fn table_stack<'a>(
    t: &'a aws_sdk_ec2::types::RouteTable,
    named: &'a BTreeMap<String, String>,
) -> Option<&'a str> {
    tag_value(t.tags(), natd_contract::EGRESS_TAG)
        .or_else(|| named.get(t.route_table_id()?).map(String::as_str))
}

async fn stack_alarms(
    c: &Clients,
    tables: &[aws_sdk_ec2::types::RouteTable],
    named: &BTreeMap<String, String>,
) -> Vec<super::alarms::StackAlarms> {
    let stacks: std::collections::BTreeSet<String> = tables
        .iter()
        .filter_map(|t| table_stack(t, named).map(str::to_string))
        .collect();
    let mut out = Vec::new();
    for stack in stacks {
        let alarms = crate::parts::alarms::read(c, &stack).await.ok().map(|o| {
            o.alarms
                .into_iter()
                .map(|a| super::alarms::AlarmState {
                    name: a.name,
                    state: a.state,
                    reason: a.reason,
                })
                .collect()
        });
        out.push(super::alarms::StackAlarms { stack, alarms });
    }
    out
}

/// The hot standby pairs of the stacks whose tables are tagged in the VPC: a stack is a
/// pair when its standby's Auto Scaling group exists.
async fn pairs(
    c: &Clients,
    tables: &[aws_sdk_ec2::types::RouteTable],
    named: &BTreeMap<String, String>,
) -> Result<Vec<super::pairs::Pair>, Invalid> {
    use super::pairs::{Address, Member, Pair};
    let mut stacks: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for t in tables {
        if let Some(stack) = table_stack(t, named) {
            stacks
                .entry(stack.to_string())
                .or_default()
                .push(t.route_table_id().unwrap_or_default().to_string());
        }
    }
    let mut out = Vec::new();
    for (stack, tables) in stacks {
        let standby = crate::aws::names::Names(&stack).standby();
        // Without permission to read Auto Scaling, natd's own reports tell.
        let group = read::auto_scaling_group(c, &standby)
            .await
            .ok()
            .flatten()
            .is_some_and(|g| read::group_of_stack(&g, &stack));
        let now = std::time::SystemTime::now();
        let mut members = Vec::new();
        for i in read::stack_instances(c, &stack).await? {
            let running = i
                .state()
                .and_then(|s| s.name())
                .is_some_and(|n| n.as_str() == "running");
            if !running {
                continue;
            }
            let Some(n) = i
                .network_interfaces()
                .iter()
                .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
            else {
                continue;
            };
            let Some(address) = n
                .private_ip_address()
                .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok())
            else {
                continue;
            };
            members.push(Member {
                instance: i.instance_id().unwrap_or_default().to_string(),
                eni: n.network_interface_id().unwrap_or_default().to_string(),
                address: IpNet::from(std::net::IpAddr::V4(address)),
                subnet: n.subnet_id().unwrap_or_default().to_string(),
                groups: n
                    .groups()
                    .iter()
                    .filter_map(|g| g.group_id().map(str::to_string))
                    .collect(),
                source_dest_check: n.source_dest_check() == Some(true),
                natd: tag_value(i.tags(), natd_contract::HEALTH_TAG)
                    .and_then(|v| crate::status::parse_natd_health(v, now)),
            });
        }
        members.sort_by(|a, b| a.instance.cmp(&b.instance));
        let reported = members
            .iter()
            .any(|m| m.natd.as_ref().is_some_and(|n| n.pair.is_some()));
        if !group && !reported {
            continue;
        }
        let mut addresses: Vec<Address> = read::stack_addresses(c, &stack)
            .await?
            .iter()
            .filter(|a| tag_value(a.tags(), natd_contract::EGRESS_TAG) == Some(stack.as_str()))
            .map(|a| Address {
                allocation: a.allocation_id().unwrap_or_default().to_string(),
                public_ip: a.public_ip().unwrap_or_default().to_string(),
                eni: a
                    .network_interface_id()
                    .filter(|e| !e.is_empty())
                    .map(str::to_string),
                private_ip: a.private_ip_address().map(str::to_string),
            })
            .collect();
        addresses.sort_by(|a, b| a.allocation.cmp(&b.allocation));
        out.push(Pair {
            stack,
            members,
            addresses,
            tables,
        });
    }
    Ok(out)
}
