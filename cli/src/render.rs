//! Every output of natctl, text and JSON, made from the data the commands return.
//! Nothing here calls AWS or decides anything.

use crate::aws::names::{EGRESS_TAG, ROUTES_TAG};
use crate::cost;
use crate::doctor::{Answer, Diagnosis, Finding, Severity};
use crate::error::Failure;
use crate::parts::{flow_logs, lambda, nat_gateways, nat_instance};
use crate::stack::{Build, Egress, Remove, Request, Step};
use crate::status::Status;
use crate::topology::Topology;
use serde_json::{Value, json};

/// Pretty JSON of `v`.
pub fn json(v: &impl serde::Serialize) -> Result<String, Failure> {
    serde_json::to_string_pretty(v).map_err(|e| Failure::Internal(format!("JSON output: {e}")))
}

fn list(items: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    items
        .into_iter()
        .map(|s| s.as_ref().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One step of a setup plan (`req` gives the names) or of teardown.
pub fn step(req: Option<&Request>, s: &Step) -> String {
    match s {
        Step::Build(Build::NatInstance(a)) => match req.map(|r| &r.egress) {
            Some(Egress::Dev(spec)) => nat_instance_action(a, spec),
            _ => format!("{a:?}"),
        },
        Step::Build(Build::NatGateways(a)) => nat_gateways_action(a),
        Step::Build(Build::Lambda(a)) => match req.and_then(|r| r.lambda.as_ref()) {
            Some(spec) => lambda_action(a, spec),
            None => format!("{a:?}"),
        },
        Step::Build(Build::FlowLogs(a)) => match req.map(|r| &r.flow_logs) {
            Some(crate::stack::FlowLogs::On(spec)) => flow_logs_action(a, spec),
            _ => format!("{a:?}"),
        },
        Step::Build(Build::Alarms(a)) => alarms_action(a),
        Step::Build(Build::Ipv6(a)) => match req.and_then(|r| r.ipv6.as_ref()) {
            Some(spec) => ipv6_action(a, spec),
            None => format!("{a:?}"),
        },
        Step::Drain { secs } => format!(
            "keep the old egress {secs} s after the routes moved, for open connections and route propagation"
        ),
        Step::Remove(r) => {
            let what = removal(r);
            match (req, r) {
                (Some(_), Remove::NatInstance(_)) => format!("remove the dev egress: {what}"),
                (Some(r), Remove::NatGateways(_)) if matches!(r.egress, Egress::Prod(_)) => {
                    format!("retire the replaced NAT gateways: {what}")
                }
                (Some(_), Remove::NatGateways(_)) => format!("remove the prod egress: {what}"),
                _ => what,
            }
        }
    }
}

fn ipv6_action(a: &crate::parts::ipv6::Action, spec: &crate::parts::ipv6::Spec) -> String {
    use crate::parts::ipv6::Action;
    match a {
        Action::AssociateVpcBlock => format!(
            "associate an Amazon-provided IPv6 /56 with {} (--add-ipv6-cidrs; teardown disassociates it)",
            spec.vpc
        ),
        Action::AssociateSubnetBlock { subnet } => format!(
            "associate the next free IPv6 /64 of the VPC's block with {subnet} (--add-ipv6-cidrs; teardown disassociates it)"
        ),
        Action::CreateGateway => format!(
            "create an egress-only internet gateway in {} (IPv6 out, nothing in; no hourly or per-GB charge)",
            spec.vpc
        ),
        Action::CreateRoute { table } => {
            format!("route ::/0 in {table} to the egress-only internet gateway")
        }
    }
}

fn alarms_action(a: &crate::parts::alarms::Action) -> String {
    use crate::parts::alarms::Action;
    match a {
        Action::Put { name, exists } => {
            let what = natd_contract::metrics::ALARMS
                .iter()
                .find(|d| name.ends_with(&format!("-{}", d.suffix)))
                .map(|d| {
                    format!(
                        " ({} {} {} {} for {} min)",
                        d.metric,
                        d.statistic,
                        match d.compare {
                            natd_contract::metrics::Compare::Above => ">",
                            natd_contract::metrics::Compare::Below => "<",
                        },
                        d.threshold,
                        d.minutes
                    )
                })
                .unwrap_or_default();
            if *exists {
                format!("update CloudWatch alarm {name}{what}")
            } else {
                format!("CloudWatch alarm {name}{what}")
            }
        }
        Action::Delete { name } => {
            format!("delete CloudWatch alarm {name} (no longer part of the stack)")
        }
    }
}

fn nat_instance_action(a: &nat_instance::Action, spec: &nat_instance::Spec) -> String {
    use nat_instance::Action;
    let name = spec.name();
    match a {
        Action::CreateSecurityGroup => format!("security group {name}"),
        Action::AuthorizeIngress { cidrs } => format!("admit {} on {name}", list(cidrs)),
        Action::RevokeIngress { cidrs } => format!(
            "stop admitting {} on {name} (no longer private subnets of the stack)",
            list(cidrs)
        ),
        Action::CreateRole => format!("IAM role {name} (trusted by EC2)"),
        Action::PutRolePolicy => format!("natd's policy on role {name}"),
        Action::CreateInstanceProfile => format!("instance profile {name} with role {name}"),
        Action::CreateLaunchTemplate => format!(
            "launch template {name}: {} {}, IMDSv2 required, hop limit 1",
            spec.ami, spec.instance_type
        ),
        Action::UpdateLaunchTemplate => format!(
            "new default version of {name}: {} {}, security group {name}",
            spec.ami, spec.instance_type
        ),
        Action::CreateGroup => format!(
            "Auto Scaling group {name} in {}",
            list(spec.group_subnets())
        ),
        Action::CreateStandbyGroup { subnets } => format!(
            "Auto Scaling group {} in {} (the pair's second instance)",
            spec.standby_name(),
            list(subnets)
        ),
        Action::UpdateStandbyGroupSubnets { subnets } => {
            format!("{}: launch in {}", spec.standby_name(), list(subnets))
        }
        Action::PutStandbyLifecycleHook => format!(
            "launch lifecycle hook {} on {} ({} s)",
            nat_instance::HOOK,
            spec.standby_name(),
            nat_instance::HOOK_TIMEOUT_SECS
        ),
        Action::ScaleStandbyToOne => format!(
            "{}: min = max = desired = 1, a replacement launches before the old instance goes",
            spec.standby_name()
        ),
        Action::AuthorizePair => format!(
            "admit UDP {} on {name} from {name} itself (heartbeats, state sync, forwarding check: the pair only)",
            nat_instance::PAIR_PORTS
                .iter()
                .map(|(p, _)| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Action::UpdateGroupSubnets { subnets } => {
            format!("{name}: launch in {}", list(subnets))
        }
        Action::PutLifecycleHook => format!(
            "launch lifecycle hook {} on {name} ({} s)",
            nat_instance::HOOK,
            nat_instance::HOOK_TIMEOUT_SECS
        ),
        Action::ScaleToOne => format!(
            "{name}: min = max = desired = 1, a replacement launches before the old instance goes"
        ),
        Action::AllocateAddress if spec.pair.is_some() => format!(
            "Elastic IP tagged {EGRESS_TAG}={} (an egress address of the pair: on a secondary private address that moves with the holder)",
            spec.stack
        ),
        Action::AllocateAddress => format!(
            "Elastic IP tagged {EGRESS_TAG}={} (natd holds it: a stable egress address)",
            spec.stack
        ),
        Action::TagRouteTable { route_table } => format!(
            "tag {route_table} {EGRESS_TAG}={} (natd takes over its default route)",
            spec.stack
        ),
        Action::WaitForTakeover => {
            "wait until natd holds every tagged table's default route".to_string()
        }
    }
}

fn nat_gateways_action(a: &nat_gateways::Action) -> String {
    use nat_gateways::{Action, TableRef};
    let table = |t: &TableRef| match t {
        TableRef::Existing(id) => id.clone(),
        TableRef::Split { az, .. } => format!("the new table of {az}"),
    };
    match a {
        Action::AllocateAddress { az } => format!("Elastic IP for the NAT gateway of {az}"),
        Action::CreateNatGateway { az, subnet } => format!("NAT gateway for {az} in {subnet}"),
        Action::CreateRegionalNatGateway { vpc } => format!(
            "regional NAT gateway for {vpc} (AvailabilityMode=regional: every AZ, AWS-provided addresses, no public subnet)"
        ),
        Action::WaitForGateways { azs } => format!(
            "wait until the NAT gateway(s) of {} are available",
            list(azs)
        ),
        Action::CreateAzTable { az, from } => {
            format!("route table for {az} (its subnets share {from} with other AZs)")
        }
        Action::ReleaseFromNatd { route_table } => {
            format!("untag {route_table} {EGRESS_TAG} (natd lets go of it)")
        }
        Action::SetDefaultRoute { route_table, az } if az == nat_gateways::REGIONAL => format!(
            "{}: 0.0.0.0/0 -> the regional NAT gateway",
            table(route_table)
        ),
        Action::SetDefaultRoute { route_table, az } => {
            format!("{}: 0.0.0.0/0 -> NAT gateway of {az}", table(route_table))
        }
        Action::TagRoutes { route_table } => format!("tag {route_table} {ROUTES_TAG}"),
        Action::MoveSubnet { subnet, az, from } => {
            format!("move {subnet} from {from} to the new table of {az}")
        }
    }
}

fn flow_logs_action(a: &flow_logs::Action, spec: &flow_logs::Spec) -> String {
    use flow_logs::Action;
    let group = flow_logs::log_group(&spec.stack);
    match a {
        Action::CreateLogGroup => format!("log group {group}"),
        Action::SetRetention { days } => format!("log group {group}: keep {days} days"),
        Action::CreateRole => format!(
            "IAM role {} (trusted by VPC Flow Logs of this account)",
            flow_logs::role(&spec.stack)
        ),
        Action::PutRolePolicy => format!(
            "policy on {}: write log streams of {group} only",
            flow_logs::role(&spec.stack)
        ),
        Action::DeleteFlowLog { id } => {
            format!("flow log {id} (it delivers elsewhere than asked)")
        }
        Action::CreateFlowLog => format!(
            "flow log of {}, all traffic, to {}",
            spec.vpc,
            match &spec.destination {
                flow_logs::Destination::CloudWatch { .. } => group.clone(),
                flow_logs::Destination::S3 { arn } => arn.clone(),
            }
        ),
    }
}

/// What the endpoint's policy lets through, in words.
fn endpoint_policy_words(spec: &lambda::Spec) -> String {
    match spec.endpoint_policy {
        lambda::EndpointPolicy::Stack => format!(
            "only GetSecretValue on {} by {}{} (other workloads of the VPC cannot use the endpoint; --endpoint-policy account lets them)",
            spec.secret_arn.as_deref().unwrap_or("-"),
            spec.role(),
            if spec.rotation_role.is_some() {
                " and the rotation function"
            } else {
                ""
            }
        ),
        lambda::EndpointPolicy::Account => {
            "this account's secrets, for this account's principals".to_string()
        }
        lambda::EndpointPolicy::Open => "AWS's default, anything for anyone".to_string(),
    }
}

fn lambda_action(a: &lambda::Action, spec: &lambda::Spec) -> String {
    use lambda::{Action, Group};
    let sg = |g: Group| match g {
        Group::Lambda => format!("LambdaSG {}", g.name(&spec.stack)),
        Group::Database => format!("DatabaseSG {}", g.name(&spec.stack)),
        Group::SecretsManager => format!("SecretsManagerSG {}", g.name(&spec.stack)),
    };
    match a {
        Action::CreateGroup { group } => format!("security group {}", sg(*group)),
        Action::AdmitFromLambda { group, port } if *group == Group::SecretsManager => format!(
            "{}: admit TCP {port} from LambdaSG only; private DNS sends every workload of the VPC to this endpoint, so workloads without LambdaSG lose Secrets Manager (--endpoint-access vpc keeps them)",
            sg(*group)
        ),
        Action::AdmitFromLambda { group, port } => {
            format!("{}: admit TCP {port} from LambdaSG only", sg(*group))
        }
        Action::AdmitFromVpc { port, cidrs } => format!(
            "SecretsManagerSG {}: admit TCP {port} from the VPC ({}); private DNS sends every workload of the VPC to this endpoint, and all keep Secrets Manager",
            Group::SecretsManager.name(&spec.stack),
            list(cidrs)
        ),
        Action::JoinEndpoint { endpoint } => format!(
            "add SecretsManagerSG to the VPC's Secrets Manager endpoint {endpoint} (not this stack's; AWS allows one with private DNS per VPC)"
        ),
        Action::CreateEndpoint => format!(
            "interface endpoint {} in {} with private DNS; policy: {}",
            spec.service(),
            list(&spec.endpoint_subnets),
            endpoint_policy_words(spec)
        ),
        Action::ModifyEndpoint => format!(
            "endpoint {}: private DNS on, subnets and SecretsManagerSG as planned",
            spec.service()
        ),
        Action::SetEndpointPolicy => format!(
            "endpoint {} policy: {}",
            spec.service(),
            endpoint_policy_words(spec)
        ),
        Action::PutSecretPolicy => format!(
            "resource policy on secret {}: {}; administrators keep managing the secret and this policy",
            spec.secret_arn.as_deref().unwrap_or("-"),
            match spec.secret_policy {
                Some(lambda::SecretPolicy::Endpoint) => format!(
                    "only {}{} may read its value, the execution role only through the VPC's endpoint",
                    spec.role(),
                    if spec.rotation_role.is_some() {
                        " and the rotation function"
                    } else {
                        ""
                    }
                ),
                _ => format!(
                    "only {}{} may read its value",
                    spec.role(),
                    if spec.rotation_role.is_some() {
                        " and the rotation function"
                    } else {
                        ""
                    }
                ),
            }
        ),
        Action::DeleteSecretPolicy => format!(
            "resource policy this stack put on secret {} (--secret-policy not given)",
            spec.secret_arn.as_deref().unwrap_or("-")
        ),
        Action::CreateRole => format!("execution role {} (trusted by Lambda)", spec.role()),
        Action::PutRolePolicy => format!(
            "policy on {}: GetSecretValue on {}, network interfaces, its log group",
            spec.role(),
            spec.secret_arn.as_deref().unwrap_or("no secret")
        ),
        Action::AttachDatabaseGroup { db_instance } => {
            format!("add DatabaseSG to DB instance {db_instance}")
        }
        Action::RecordPrevious => format!(
            "tag {} with its current role and VPC config (teardown restores them)",
            spec.function
        ),
        Action::UpdateFunction => format!(
            "{}: role {}, subnets {}, LambdaSG{}",
            spec.function,
            spec.role(),
            list(&spec.subnets),
            match spec.ipv6 {
                Some(true) => ", Ipv6AllowedForDualStack",
                _ => "",
            }
        ),
        Action::AllowIpv6Egress => format!(
            "{}: let everything out to ::/0 (IPv6 egress)",
            sg(Group::Lambda)
        ),
    }
}

/// One removal, as "kind id (detail)".
pub fn removal(r: &Remove) -> String {
    match r {
        Remove::NatInstance(r) => {
            use nat_instance::Removal;
            match r {
                Removal::UntagTable { route_table } => {
                    format!("route table tag {EGRESS_TAG} on {route_table}")
                }
                Removal::DeleteRoute {
                    route_table,
                    target,
                } => format!("route {route_table} 0.0.0.0/0 -> {target}"),
                Removal::DeleteGroup { name } => {
                    format!("auto scaling group {name} (terminates its instances)")
                }
                Removal::WaitTerminated { instances } => {
                    format!("wait until {} are terminated", list(instances))
                }
                Removal::DeleteLaunchTemplate { id, name } => {
                    format!("launch template {name} ({id})")
                }
                Removal::DeleteSecurityGroup { id, name } => {
                    format!("security group {id} ({name})")
                }
                Removal::DeleteInstanceProfile { name } => format!("instance profile {name}"),
                Removal::DeleteRole { name } => format!("IAM role {name}"),
                Removal::ReleaseAddress { address } => format!(
                    "Elastic IP {} ({})",
                    address.allocation_id, address.public_ip
                ),
            }
        }
        Remove::NatGateways(r) => {
            use nat_gateways::Removal;
            match r {
                Removal::MoveSubnetBack { subnet, to, .. } => {
                    format!("subnet {subnet} back to {to}")
                }
                Removal::DeleteRouteTable { id } => format!("route table {id}"),
                Removal::DeleteRoute { route_table } => {
                    format!("route {route_table} 0.0.0.0/0 -> the stack's NAT gateway")
                }
                Removal::UntagRoutes { route_table } => {
                    format!("route table tag {ROUTES_TAG} on {route_table}")
                }
                Removal::DeleteNatGateway { id, az } => format!("NAT gateway {id} ({az})"),
                Removal::WaitDeleted { ids } => {
                    format!("wait until {} are deleted", list(ids))
                }
                Removal::ReleaseAddress { address } => format!(
                    "Elastic IP {} ({})",
                    address.allocation_id, address.public_ip
                ),
            }
        }
        Remove::Alarms(crate::parts::alarms::Removal::Alarm { name }) => {
            format!("CloudWatch alarm {name}")
        }
        Remove::Ipv6(r) => {
            use crate::parts::ipv6::Removal;
            match r {
                Removal::Route { table } => format!("{table}'s ::/0 route (IPv6 egress)"),
                Removal::Gateway { id } => format!("egress-only internet gateway {id}"),
                Removal::SubnetBlock { subnet, .. } => {
                    format!("the IPv6 block setup gave {subnet}")
                }
                Removal::VpcBlock { vpc, .. } => format!("the IPv6 block setup gave {vpc}"),
            }
        }
        Remove::FlowLogs(r) => match r {
            flow_logs::Removal::FlowLog { id } => format!("flow log {id}"),
            flow_logs::Removal::LogGroup { name } => {
                format!("log group {name} (with the flow records in it)")
            }
            flow_logs::Removal::Role { name } => format!("IAM role {name}"),
        },
        Remove::Lambda(r) => {
            use lambda::Removal;
            match r {
                Removal::RestoreFunction { function } => format!(
                    "function configuration of {}: back to role {} and {}",
                    function.function,
                    function.previous_role,
                    if function.previous_subnets.is_empty() {
                        "no VPC".to_string()
                    } else {
                        format!("subnets {}", list(&function.previous_subnets))
                    }
                ),
                Removal::WaitInterfacesReleased { function, group } => format!(
                    "wait until Lambda releases {function}'s network interfaces (they hold {group})"
                ),
                Removal::DetachDatabaseGroup { db_instance, .. } => {
                    format!("DatabaseSG on DB instance {db_instance}")
                }
                Removal::DeleteEndpoint { id } => format!("VPC endpoint {id}"),
                Removal::DeleteSecretPolicy { secret } => {
                    format!("resource policy this stack put on secret {secret}")
                }
                Removal::LeaveEndpoint { endpoint, group } => {
                    format!("SecretsManagerSG {group} on endpoint {endpoint} (the endpoint stays)")
                }
                Removal::DeleteSecurityGroup { group, id } => {
                    format!("security group {id} ({group:?}SG)")
                }
                Removal::DeleteRole { name } => format!("IAM role {name}"),
            }
        }
    }
}

/// The plan of a setup, as text.
pub fn setup_plan(req: &Request, vpc: &str, steps: &[Step]) -> String {
    if steps.is_empty() {
        return "No changes necessary.".to_string();
    }
    let mut s = format!("Plan for stack {} ({}) in {vpc}:\n", req.stack, req.env());
    for st in steps {
        let sign = if matches!(st, Step::Remove(_)) {
            '-'
        } else {
            '+'
        };
        s.push_str(&format!("  {sign} {}\n", step(Some(req), st)));
    }
    if let Egress::Dev(nat_instance::Spec {
        pair: Some(p),
        instance_type,
        ..
    }) = &req.egress
    {
        if let Some(limit) = p.addresses_per_interface {
            let n = p
                .egress_ips
                .map_or_else(|| "its".to_string(), |n| n.to_string());
            s.push_str(&format!(
                "Note: each member runs on {instance_type}, which holds {limit} IPv4 addresses per network interface: its own and {n} egress address(es), all of which the standby receives at a takeover.\n"
            ));
        }
        s.push_str(&if p.spread {
            format!(
                "Note: --ha-spread puts the pair in {} and {} (two AZs): it survives an AZ loss, but a private address cannot follow across subnets: on failover the Elastic IP is re-associated with an address of the standby (the same public address), and open connections reset.\n",
                p.subnet_a, p.subnet_b
            )
        } else {
            format!(
                "Note: both instances of the pair run in {} (one AZ), so the egress address and open connections follow a failover; an outage of that AZ takes both (--ha-spread trades that for connection resets).\n",
                p.subnet_a
            )
        });
    }
    s.trim_end().to_string()
}

/// A setup or plan, as JSON.
pub fn setup_json(req: &Request, steps: &[Step], applied: bool) -> Value {
    json!({
        "stack": req.stack,
        "env": req.env(),
        "request": req,
        "steps": steps,
        "applied": applied,
    })
}

/// A teardown, as text.
pub fn teardown_text(stack: &str, steps: &[Step], dry_run: bool) -> String {
    if steps.is_empty() {
        return format!("Nothing to remove for stack {stack}.");
    }
    let mut s = if dry_run {
        format!("Teardown of stack {stack} would remove:\n")
    } else {
        format!("Removed from stack {stack}:\n")
    };
    for st in steps {
        s.push_str(&format!("  - {}\n", step(None, st)));
    }
    s.trim_end().to_string()
}

/// A teardown, as JSON.
pub fn teardown_json(stack: &str, steps: &[Step], applied: bool) -> Value {
    json!({"stack": stack, "steps": steps, "applied": applied})
}

/// The line under a NAT instance saying what natd on it published.
fn natd_line(n: &crate::status::NatdReport) -> String {
    if n.stale {
        return format!(
            "    natd: no report for {} min (last at {}): natd is stopped, or cannot reach EC2\n",
            n.age_secs / 60,
            n.reported_at
        );
    }
    let mut s = format!(
        "    natd: data plane {}{}, control plane {}{} (reported {} s ago)",
        n.data,
        n.failing
            .as_ref()
            .map(|f| format!(" ({f} failed passes)"))
            .unwrap_or_default(),
        n.control,
        if n.control == "ok" {
            ""
        } else {
            " (natd cannot reach AWS; forwarding is not affected)"
        },
        n.age_secs
    );
    if let Some(p) = &n.pair {
        s.push_str(&format!(
            "; pair: {}{}, heartbeats {}{}{}{}",
            p.role,
            p.peer
                .as_ref()
                .map(|x| format!(" (peer {x})"))
                .unwrap_or_default(),
            p.heartbeats,
            p.held_entries
                .filter(|e| *e > 0)
                .map(|e| format!(", forwards {e} synced connection(s)"))
                .unwrap_or_default(),
            p.synced_entries
                .map(|e| format!(
                    ", holds {e} of the peer's connections{}",
                    match (p.behind_entries, p.behind_secs) {
                        (Some(0), Some(_)) => " (in step with the holder)".to_string(),
                        (Some(b), Some(secs)) => format!(
                            " (about {b} behind the holder for {secs} s or more: a failover now resets those; natd asks for a full resync)"
                        ),
                        (Some(b), None) => format!(" (about {b} behind the holder)"),
                        (None, _) => String::new(),
                    }
                ))
                .unwrap_or_default(),
            p.last_takeover
                .as_ref()
                .map(|t| format!(", last takeover {t}"))
                .unwrap_or_default(),
        ));
    }
    if let Some(o) = &n.api_outage {
        s.push_str(&format!(
            "; last AWS API outage {} s, ended {}",
            o.secs, o.ended
        ));
    }
    s.push('\n');
    s
}

/// A stack's status, as text.
pub fn status_text(st: &Status) -> String {
    let mut s = format!(
        "stack {}: egress {}\n",
        st.stack,
        if st.healthy { "ok" } else { "BROKEN" }
    );
    for i in &st.instances {
        s.push_str(&format!(
            "  NAT instance {} ({}): {}, {}, ENI {}\n",
            i.id,
            i.az,
            i.lifecycle,
            i.health,
            i.eni.as_deref().unwrap_or("none (not running)")
        ));
        if let Some(n) = &i.natd {
            s.push_str(&natd_line(n));
        }
    }
    for g in &st.gateways {
        s.push_str(&format!(
            "  NAT gateway {} ({}): {}, {}\n",
            g.id,
            g.az,
            g.state,
            g.public_ip.as_deref().unwrap_or("no address")
        ));
    }
    if st.instances.is_empty() && st.gateways.is_empty() {
        s.push_str("  no NAT instance or NAT gateway\n");
    }
    if let Some(w) = crate::status::pair_warning(&st.instances) {
        s.push_str(&format!("  pair: {w}\n"));
    }
    for t in &st.route_tables {
        s.push_str(&format!(
            "  route table {}{}: 0.0.0.0/0 -> {} ({}){}{}\n",
            t.id,
            if t.azs.is_empty() {
                String::new()
            } else {
                format!(" [{}]", t.azs.join(", "))
            },
            t.target.as_deref().unwrap_or("none"),
            t.state.as_deref().unwrap_or("no route"),
            if t.cross_az { ", crosses AZs" } else { "" },
            if t.ok { "" } else { "  <- broken" }
        ));
    }
    if let Some(l) = &st.lambda {
        s.push_str(&format!(
            "  Lambda {}: execution role {}, subnets [{}], LambdaSG {}, Secrets Manager endpoint {}{}\n",
            l.function,
            if l.role_attached { "attached" } else { "NOT attached" },
            l.subnets.join(", "),
            if l.lambda_sg_attached { "attached" } else { "NOT attached" },
            l.endpoint.as_deref().unwrap_or("none"),
            if l.endpoint_private_dns { " with private DNS" } else { " WITHOUT private DNS" },
        ));
    }
    if !st.metrics.is_empty() {
        let shown: Vec<String> = st
            .metrics
            .iter()
            .map(|m| {
                let v = if m.metric.starts_with("Bytes") {
                    bytes(m.value)
                } else if m.metric.ends_with("Percent") {
                    format!("{:.1} %", m.value)
                } else {
                    format!("{}", m.value.round() as i64)
                };
                format!("{} {v}", m.metric)
            })
            .collect();
        let at = st.metrics.iter().map(|m| m.at.as_str()).max().unwrap_or("");
        s.push_str(&format!(
            "  metrics (newest minute, {at}): {}\n",
            shown.join(", ")
        ));
    }
    if !st.alarms.is_empty() {
        let firing: Vec<&str> = st
            .alarms
            .iter()
            .filter(|a| a.state == "ALARM")
            .map(|a| a.name.as_str())
            .collect();
        if firing.is_empty() {
            s.push_str(&format!(
                "  alarms: {} set, none in ALARM\n",
                st.alarms.len()
            ));
        } else {
            s.push_str(&format!(
                "  alarms: {} set, IN ALARM: {}\n",
                st.alarms.len(),
                firing.join(", ")
            ));
        }
    }
    if let Some(v6) = &st.ipv6 {
        s.push_str(&format!(
            "  IPv6 (no NAT): {}\n",
            v6.gateway
                .as_deref()
                .map_or("the VPC's egress-only internet gateway".to_string(), |g| {
                    format!("egress-only internet gateway {g}")
                })
        ));
        for (table, target) in &v6.routes {
            let ok = target.as_deref().is_some_and(|t| t.starts_with("eigw-"));
            s.push_str(&format!(
                "    {table}: ::/0 -> {} {}\n",
                target.as_deref().unwrap_or("none"),
                if ok { "ok" } else { "BROKEN" }
            ));
        }
    }
    if st.route_tables.is_empty() {
        s.push_str(&format!(
            "  no route table tagged {EGRESS_TAG}={0} or {ROUTES_TAG}={0}\n",
            st.stack
        ));
    }
    s.trim_end().to_string()
}

/// A byte count for people (decimal units, as CloudWatch's console shows them).
fn bytes(b: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{} B", v.round() as i64)
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// The estimates again with `percent` of the traffic over IPv6, and what that saves.
pub fn ipv6_share_text(
    percent: f64,
    before: &[&cost::Estimate],
    after: &[cost::Estimate],
) -> String {
    let mut s = format!(
        "\n\nWith {percent} % of the traffic over IPv6 (egress-only internet gateway), per month:\n"
    );
    for (b, a) in before.iter().zip(after) {
        s.push_str(&format!(
            "  {:<15} {:>10.2}  (saves {:.2})\n",
            a.env,
            a.total_usd,
            b.total_usd - a.total_usd
        ));
    }
    s.trim_end().to_string()
}

/// One answer, in a few words.
fn answer_text(a: &Answer) -> String {
    if a.ok {
        format!("yes ({})", a.via.join("; "))
    } else {
        "NO".to_string()
    }
}

/// doctor's diagnosis, as text: the answers per function, then the findings grouped by
/// severity, each with its evidence and fix.
pub fn doctor_text(vpc: &str, functions: usize, d: &Diagnosis) -> String {
    let breaks = d.count(Severity::Breaks);
    let risk = d.count(Severity::Risk);
    let advice = d.count(Severity::Advice);
    let mut s = if breaks + risk == 0 {
        format!("{vpc}: no problem found ({functions} function(s) looked at)")
    } else {
        format!("{vpc}: {breaks} break(s), {risk} risk(s) ({functions} function(s) looked at)")
    };
    if advice > 0 {
        s.push_str(&format!("; {advice} piece(s) of advice"));
    }
    s.push_str(".\n");
    for a in &d.answers {
        s.push_str(&format!("\n{}\n", a.function));
        match &a.secret {
            Some(x) => s.push_str(&format!("  secret:   {}\n", answer_text(x))),
            None => s.push_str("  secret:   (its role reads no secret)\n"),
        }
        for (db, x) in &a.databases {
            s.push_str(&format!("  database: {db}: {}\n", answer_text(x)));
        }
        s.push_str(&format!("  internet: {}\n", answer_text(&a.internet)));
    }
    for (sev, title) in [
        (Severity::Breaks, "Breaks"),
        (Severity::Risk, "Risk"),
        (Severity::Advice, "Advice"),
    ] {
        let of: Vec<&Finding> = d.findings.iter().filter(|f| f.severity == sev).collect();
        if of.is_empty() {
            continue;
        }
        s.push_str(&format!("\n{title}:\n"));
        for f in of {
            s.push_str(&format!("\n- {}\n", f.problem));
            for e in &f.evidence {
                s.push_str(&format!("  Evidence: {e}\n"));
            }
            s.push_str(&format!("  Fix: {}\n", f.fix));
        }
    }
    s.trim_end().to_string()
}

/// doctor's diagnosis, as JSON.
pub fn doctor_json(vpc: &str, functions: &[String], d: &Diagnosis, strict: bool) -> Value {
    json!({
        "vpc": vpc,
        "functions": functions,
        "answers": d.answers,
        "counts": {
            "breaks": d.count(Severity::Breaks),
            "risk": d.count(Severity::Risk),
            "advice": d.count(Severity::Advice),
        },
        "strict": strict,
        "findings": d.findings,
    })
}

/// A VPC's subnets per AZ, as text.
pub fn subnets_text(topo: &Topology) -> String {
    let mut s = format!("{}\n", topo.vpc_id);
    for (az, a) in &topo.azs {
        s.push_str(&format!(
            "  {az}: public [{}] private [{}] via [{}]\n",
            a.public.join(", "),
            a.private.join(", "),
            list(&a.private_tables)
        ));
    }
    for t in &topo.shared_private_tables {
        s.push_str(&format!(
            "  {t} serves private subnets in several AZs; prod splits it per AZ\n"
        ));
    }
    s.trim_end().to_string()
}

/// The cost estimate, as text; `highlight` marks "dev" or "prod".
pub fn cost_text(
    estimates: &[&cost::Estimate],
    highlight: Option<&str>,
    azs: u32,
    gb: f64,
    p: &cost::Prices,
) -> String {
    let mark = |e: &str| if highlight == Some(e) { " *" } else { "" };
    let mut s = format!(
        "Monthly estimate, {azs} AZ(s), {gb} GB/month through NAT (USD, {} h/month)\n\n{:<22}",
        cost::HOURS_PER_MONTH,
        "",
    );
    for e in estimates {
        s.push_str(&format!(" {:>15}", format!("{}{}", e.env, mark(e.env))));
    }
    s.push('\n');
    let rows = estimates.first().map_or(0, |e| e.lines.len());
    for i in 0..rows {
        // The first row is each column's NAT (named below the table); the others are
        // the same item in every column, counts aside.
        let label = match i {
            0 => "NAT",
            _ => estimates[0].lines[i]
                .item
                .split(" (")
                .next()
                .unwrap_or_default(),
        };
        s.push_str(&format!("{label:<22}"));
        for e in estimates {
            s.push_str(&format!(" {:>15.2}", e.lines[i].usd));
        }
        s.push('\n');
    }
    s.push_str(&format!("{:<22}", "total"));
    for e in estimates {
        s.push_str(&format!(" {:>15.2}", e.total_usd));
    }
    s.push('\n');
    s.push_str("\nNAT:");
    for e in estimates {
        s.push_str(&format!(" {} = {};", e.env, e.lines[0].item));
    }
    s.pop();
    s.push_str(&format!(
        "\nPrices used (override with --price KEY=VALUE): nat_gateway_hour={} nat_gateway_gb={} \
regional_nat_gateway_az_hour={} public_ipv4_hour={} instance_hour={} ebs_gb_month={} ebs_gb={} cross_az_gb={} \
metric_month={} metric_requests_1000={} alarm_month={}\n\
CloudWatch: natd publishes its metrics itself (a pair: per stack and per member; error counters are billed only in hours they count) and natctl sets its alarms; a NAT gateway's metrics are free.\n\
A regional NAT gateway is billed per hour in each AZ it is active in, with an AWS-provided address per AZ.\n\
dev-ha is the hot standby pair (setup --env dev --ha; one egress address, add one public IPv4 per --egress-ips): failover in about a second, open connections kept.\n\
ipv6-only is an egress-only internet gateway (free: no hours, no data processing) for destinations that speak IPv6; IPv4-only destinations still need NAT (--ipv6-share P prices a mix).\n\
Internet data transfer out is charged the same for all and not included.",
        p.nat_gateway_hour,
        p.nat_gateway_gb,
        p.regional_nat_gateway_az_hour,
        p.public_ipv4_hour,
        p.instance_hour,
        p.ebs_gb_month,
        p.ebs_gb,
        p.cross_az_gb,
        p.metric_month,
        p.metric_requests_1000,
        p.alarm_month
    ));
    s
}

/// The cost estimate, as JSON.
pub fn cost_json(
    dev: &cost::Estimate,
    prod: &cost::Estimate,
    regional: &cost::Estimate,
    azs: u32,
    gb: f64,
    p: &cost::Prices,
) -> Value {
    json!({
        "azs": azs, "gb_per_month": gb, "prices": p,
        "hours_per_month": cost::HOURS_PER_MONTH, "dev": dev, "prod": prod,
        "prod_regional": regional,
    })
}
