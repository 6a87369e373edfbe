//! `natctl teardown --name STACK`: removes exactly what setup created for the stack,
//! found by name *and* the `natd:stack` tag (anything else is left alone), in
//! dependency order. Idempotent: a second run finds nothing.

use crate::dev::{Clients, Error, egress_tables, err, found, tag_value};
use crate::prod::{AZ_TAG, ROUTES_TAG, SPLIT_TAG};
use aws_sdk_ec2::types::{Address, Filter};
use natd::cloud::ApiError;
use natd::contract::{DEFAULT_ROUTE, EGRESS_TAG, STACK_TAG};
use serde::Serialize;
use std::time::{Duration, Instant};

/// How long teardown waits for the NAT instances to terminate before it removes the
/// security group they use (EC2 usually needs 30-90 s).
const INSTANCE_WAIT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_secs(2);

/// One removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removal {
    /// What kind of resource.
    pub kind: &'static str,
    /// Its id or name.
    pub id: String,
}

/// Removes the stack, dev and prod parts; returns what was removed (empty when
/// nothing was left).
pub async fn run(
    c: &Clients,
    stack: &str,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<Removal>, Error> {
    let mut removed = crate::lambda::remove(c, stack, progress).await?;
    removed.extend(remove_dev(c, stack, progress).await?);
    removed.extend(remove_prod(c, stack, false, progress).await?);
    Ok(removed)
}

/// What is left of the stack's dev egress (empty when none), described for a plan.
pub async fn dev_parts(c: &Clients, stack: &str) -> Result<Vec<String>, Error> {
    let name = format!("natd-{stack}");
    let mut parts = Vec::new();
    let groups = c
        .asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&name)
        .send()
        .await
        .map_err(err("DescribeAutoScalingGroups", &name))?;
    if groups.auto_scaling_groups().iter().any(|g| {
        g.tags()
            .iter()
            .any(|t| t.key() == Some(STACK_TAG) && t.value() == Some(stack))
    }) {
        parts.push(format!("auto scaling group {name}"));
    }
    let sgs = c
        .ec2
        .describe_security_groups()
        .filters(
            Filter::builder()
                .name(format!("tag:{STACK_TAG}"))
                .values(stack)
                .build(),
        )
        .filters(Filter::builder().name("group-name").values(&name).build())
        .send()
        .await
        .map_err(err("DescribeSecurityGroups", &name))?;
    for g in sgs.security_groups() {
        parts.push(format!(
            "security group {}",
            g.group_id().unwrap_or_default()
        ));
    }
    if role_tags(c, &name)
        .await?
        .get(STACK_TAG)
        .map(String::as_str)
        == Some(stack)
    {
        parts.push(format!("IAM role and instance profile {name}"));
    }
    for t in egress_tables(c, stack).await? {
        parts.push(format!(
            "tag {EGRESS_TAG}={stack} on {}",
            t.route_table_id().unwrap_or_default()
        ));
    }
    Ok(parts)
}

/// Removes the stack's dev egress: untags natd's route tables and drops the routes to
/// its instances, deletes the group (waiting for its instances to terminate), the
/// launch template, the security group, the instance profile and the role.
pub async fn remove_dev(
    c: &Clients,
    stack: &str,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<Removal>, Error> {
    let name = format!("natd-{stack}");
    let mut removed = Vec::new();
    let stack_filter = || {
        Filter::builder()
            .name(format!("tag:{STACK_TAG}"))
            .values(stack)
            .build()
    };

    // 1. Route tables: untag first so no natd takes a route back, then drop the default
    //    routes that point at the stack's instances or are blackholes.
    let tables = egress_tables(c, stack).await?;
    let stack_instances = c
        .ec2
        .describe_instances()
        .filters(stack_filter())
        .send()
        .await
        .map_err(err("DescribeInstances", stack))?;
    let mut ours: Vec<String> = Vec::new();
    let mut live: Vec<String> = Vec::new();
    for i in stack_instances
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
    {
        let id = i.instance_id().unwrap_or_default().to_string();
        ours.extend(
            i.network_interfaces()
                .iter()
                .filter_map(|n| n.network_interface_id())
                .map(str::to_string),
        );
        if i.state()
            .and_then(|s| s.name())
            .is_some_and(|n| n.as_str() != "terminated")
        {
            live.push(id.clone());
        }
        ours.push(id);
    }
    for t in &tables {
        let id = t.route_table_id().unwrap_or_default();
        c.ec2
            .delete_tags()
            .resources(id)
            .tags(aws_sdk_ec2::types::Tag::builder().key(EGRESS_TAG).build())
            .send()
            .await
            .map_err(err("DeleteTags", id))?;
        removed.push(Removal {
            kind: "route table tag",
            id: format!("{id} {EGRESS_TAG}={stack}"),
        });
        if let Some(r) = natd::aws::default_route(t) {
            let target = r.network_interface_id().or(r.instance_id());
            let blackhole = r.state().is_some_and(|s| s.as_str() == "blackhole");
            if target.is_some_and(|t| ours.iter().any(|o| o == t))
                || (target.is_some() && blackhole)
            {
                c.ec2
                    .delete_route()
                    .route_table_id(id)
                    .destination_cidr_block(DEFAULT_ROUTE)
                    .send()
                    .await
                    .map_err(err("DeleteRoute", id))?;
                removed.push(Removal {
                    kind: "route",
                    id: format!("{id} {DEFAULT_ROUTE}"),
                });
            }
        }
    }

    // 2. The group (terminating its instances), then wait for them to go.
    let groups = c
        .asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&name)
        .send()
        .await
        .map_err(err("DescribeAutoScalingGroups", &name))?;
    let ours_group = groups.auto_scaling_groups().iter().any(|g| {
        g.tags()
            .iter()
            .any(|t| t.key() == Some(STACK_TAG) && t.value() == Some(stack))
    });
    if ours_group {
        c.asg
            .delete_auto_scaling_group()
            .auto_scaling_group_name(&name)
            .force_delete(true)
            .send()
            .await
            .map_err(err("DeleteAutoScalingGroup", &name))?;
        removed.push(Removal {
            kind: "auto scaling group",
            id: name.clone(),
        });
    }
    if !live.is_empty() {
        progress(&format!("waiting for {} to terminate", live.join(", ")));
        let start = Instant::now();
        loop {
            let r = c
                .ec2
                .describe_instances()
                .filters(
                    Filter::builder()
                        .name("instance-id")
                        .set_values(Some(live.clone()))
                        .build(),
                )
                .send()
                .await
                .map_err(err("DescribeInstances", stack))?;
            let running = r
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| {
                    i.state()
                        .and_then(|s| s.name())
                        .is_some_and(|n| n.as_str() != "terminated")
                })
                .count();
            if running == 0 {
                break;
            }
            if start.elapsed() > INSTANCE_WAIT {
                return Err(Error {
                    op: "wait for termination",
                    target: live.join(","),
                    source: ApiError {
                        code: None,
                        message: format!("still running after {INSTANCE_WAIT:?}"),
                    },
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    // 3. Launch template, security group.
    let lts = c
        .ec2
        .describe_launch_templates()
        .filters(stack_filter())
        .filters(
            Filter::builder()
                .name("launch-template-name")
                .values(&name)
                .build(),
        )
        .send()
        .await
        .map_err(err("DescribeLaunchTemplates", &name))?;
    for lt in lts.launch_templates() {
        let id = lt.launch_template_id().unwrap_or_default();
        c.ec2
            .delete_launch_template()
            .launch_template_id(id)
            .send()
            .await
            .map_err(err("DeleteLaunchTemplate", id))?;
        removed.push(Removal {
            kind: "launch template",
            id: name.clone(),
        });
    }
    let sgs = c
        .ec2
        .describe_security_groups()
        .filters(stack_filter())
        .filters(Filter::builder().name("group-name").values(&name).build())
        .send()
        .await
        .map_err(err("DescribeSecurityGroups", &name))?;
    for g in sgs.security_groups() {
        let id = g.group_id().unwrap_or_default();
        c.ec2
            .delete_security_group()
            .group_id(id)
            .send()
            .await
            .map_err(err("DeleteSecurityGroup", id))?;
        removed.push(Removal {
            kind: "security group",
            id: id.to_string(),
        });
    }

    // 4. IAM: only a role carrying the stack's tag.
    let role_is_ours = role_tags(c, &name)
        .await?
        .get(STACK_TAG)
        .map(String::as_str)
        == Some(stack);
    if role_is_ours {
        let detach = c
            .iam
            .remove_role_from_instance_profile()
            .instance_profile_name(&name)
            .role_name(&name)
            .send()
            .await;
        found(detach, "RemoveRoleFromInstanceProfile", &name)?;
        let profile = c
            .iam
            .delete_instance_profile()
            .instance_profile_name(&name)
            .send()
            .await;
        if found(profile, "DeleteInstanceProfile", &name)?.is_some() {
            removed.push(Removal {
                kind: "instance profile",
                id: name.clone(),
            });
        }
        removed.push(delete_role(c, &name).await?);
    }
    // 5. The stack's Elastic IP for the NAT instance (--eip), now that no instance
    //    holds it.
    for a in stack_addresses(c, stack).await? {
        if a.tags().iter().any(|t| t.key() == Some(AZ_TAG)) {
            continue; // a prod gateway's address
        }
        removed.extend(release_address(c, &a).await?);
    }
    Ok(removed)
}

/// The tags of IAM role `role` (empty when there is no such role).
pub(crate) async fn role_tags(
    c: &Clients,
    role: &str,
) -> Result<std::collections::BTreeMap<String, String>, Error> {
    let tags = found(
        c.iam.list_role_tags().role_name(role).send().await,
        "ListRoleTags",
        role,
    )?;
    Ok(tags
        .map(|t| {
            t.tags()
                .iter()
                .map(|t| (t.key().to_string(), t.value().to_string()))
                .collect()
        })
        .unwrap_or_default())
}

/// Deletes IAM role `role` and its inline policies.
pub(crate) async fn delete_role(c: &Clients, role: &str) -> Result<Removal, Error> {
    let policies = c
        .iam
        .list_role_policies()
        .role_name(role)
        .send()
        .await
        .map_err(err("ListRolePolicies", role))?;
    for p in policies.policy_names() {
        c.iam
            .delete_role_policy()
            .role_name(role)
            .policy_name(p)
            .send()
            .await
            .map_err(err("DeleteRolePolicy", role))?;
    }
    c.iam
        .delete_role()
        .role_name(role)
        .send()
        .await
        .map_err(err("DeleteRole", role))?;
    Ok(Removal {
        kind: "IAM role",
        id: role.to_string(),
    })
}

async fn stack_addresses(c: &Clients, stack: &str) -> Result<Vec<Address>, Error> {
    let r = c
        .ec2
        .describe_addresses()
        .filters(
            Filter::builder()
                .name(format!("tag:{STACK_TAG}"))
                .values(stack)
                .build(),
        )
        .send()
        .await
        .map_err(err("DescribeAddresses", stack))?;
    // Checked here too: the filter is the API's, the guarantee is ours.
    Ok(r.addresses()
        .iter()
        .filter(|a| tag_value(a.tags(), STACK_TAG) == Some(stack))
        .cloned()
        .collect())
}

async fn release_address(c: &Clients, a: &Address) -> Result<Option<Removal>, Error> {
    let id = a.allocation_id().unwrap_or_default();
    if let Some(assoc) = a.association_id() {
        let r = c
            .ec2
            .disassociate_address()
            .association_id(assoc)
            .send()
            .await;
        found(r, "DisassociateAddress", id)?;
    }
    let r = c.ec2.release_address().allocation_id(id).send().await;
    Ok(found(r, "ReleaseAddress", id)?.map(|_| Removal {
        kind: "Elastic IP",
        id: format!("{id} ({})", a.public_ip().unwrap_or_default()),
    }))
}

/// Whether the stack has prod egress (NAT gateways, their addresses, managed tables).
pub async fn prod_parts(c: &Clients, stack: &str) -> Result<Vec<String>, Error> {
    let mut parts: Vec<String> = crate::prod::gateways(c, stack)
        .await?
        .into_iter()
        .map(|(az, g)| format!("NAT gateway {} ({az})", g.id))
        .collect();
    for a in stack_addresses(c, stack).await? {
        if a.tags().iter().any(|t| t.key() == Some(AZ_TAG)) {
            parts.push(format!(
                "Elastic IP {}",
                a.allocation_id().unwrap_or_default()
            ));
        }
    }
    Ok(parts)
}

/// Removes the stack's prod egress: split tables (their subnets go back to the table
/// they came from) unless `keep_tables`, the default routes to the stack's gateways and
/// the `natd:routes` tags, the gateways (waiting until they are deleted), and their
/// Elastic IPs.
pub async fn remove_prod(
    c: &Clients,
    stack: &str,
    keep_tables: bool,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<Removal>, Error> {
    let mut removed = Vec::new();
    let all_gateways = c
        .ec2
        .describe_nat_gateways()
        .filter(
            Filter::builder()
                .name(format!("tag:{STACK_TAG}"))
                .values(stack)
                .build(),
        )
        .send()
        .await
        .map_err(err("DescribeNatGateways", stack))?;
    // Checked here too: the filter is the API's, the guarantee is ours.
    let all_gateways: Vec<&aws_sdk_ec2::types::NatGateway> = all_gateways
        .nat_gateways()
        .iter()
        .filter(|g| tag_value(g.tags(), STACK_TAG) == Some(stack))
        .collect();
    let gateway_ids: Vec<String> = all_gateways
        .iter()
        .filter_map(|g| g.nat_gateway_id().map(str::to_string))
        .collect();

    // 1. Split tables: subnets back to where they came from, then the table.
    if !keep_tables {
        let splits = c
            .ec2
            .describe_route_tables()
            .filters(
                Filter::builder()
                    .name(format!("tag:{STACK_TAG}"))
                    .values(stack)
                    .build(),
            )
            .filters(Filter::builder().name("tag-key").values(SPLIT_TAG).build())
            .send()
            .await
            .map_err(err("DescribeRouteTables", stack))?;
        for t in splits.route_tables() {
            let id = t.route_table_id().unwrap_or_default();
            let from = t
                .tags()
                .iter()
                .find(|t| t.key() == Some(SPLIT_TAG))
                .and_then(|t| t.value())
                .unwrap_or_default();
            let origin = c
                .ec2
                .describe_route_tables()
                .filters(
                    Filter::builder()
                        .name("route-table-id")
                        .values(from)
                        .build(),
                )
                .send()
                .await
                .map_err(err("DescribeRouteTables", from))?;
            let origin_is_main = origin
                .route_tables()
                .first()
                .map(|o| o.associations().iter().any(|a| a.main() == Some(true)));
            for a in t.associations() {
                let (Some(assoc), Some(subnet)) = (a.route_table_association_id(), a.subnet_id())
                else {
                    continue;
                };
                match origin_is_main {
                    Some(false) => {
                        c.ec2
                            .replace_route_table_association()
                            .association_id(assoc)
                            .route_table_id(from)
                            .send()
                            .await
                            .map_err(err("ReplaceRouteTableAssociation", subnet))?;
                    }
                    // Back to the main table (or it is gone): drop the association.
                    _ => {
                        c.ec2
                            .disassociate_route_table()
                            .association_id(assoc)
                            .send()
                            .await
                            .map_err(err("DisassociateRouteTable", subnet))?;
                    }
                }
                removed.push(Removal {
                    kind: "subnet moved back",
                    id: format!("{subnet} -> {from}"),
                });
            }
            c.ec2
                .delete_route_table()
                .route_table_id(id)
                .send()
                .await
                .map_err(err("DeleteRouteTable", id))?;
            removed.push(Removal {
                kind: "route table",
                id: id.to_string(),
            });
        }
    }

    // 2. Default routes to the stack's gateways, and the natd:routes tags.
    let managed = c
        .ec2
        .describe_route_tables()
        .filters(
            Filter::builder()
                .name(format!("tag:{ROUTES_TAG}"))
                .values(stack)
                .build(),
        )
        .send()
        .await
        .map_err(err("DescribeRouteTables", stack))?;
    for t in managed.route_tables() {
        let id = t.route_table_id().unwrap_or_default();
        let to_gateway = natd::aws::default_route(t)
            .and_then(|r| r.nat_gateway_id())
            .is_some_and(|g| gateway_ids.iter().any(|o| o == g));
        if to_gateway {
            c.ec2
                .delete_route()
                .route_table_id(id)
                .destination_cidr_block(DEFAULT_ROUTE)
                .send()
                .await
                .map_err(err("DeleteRoute", id))?;
            removed.push(Removal {
                kind: "route",
                id: format!("{id} {DEFAULT_ROUTE}"),
            });
        }
        c.ec2
            .delete_tags()
            .resources(id)
            .tags(aws_sdk_ec2::types::Tag::builder().key(ROUTES_TAG).build())
            .send()
            .await
            .map_err(err("DeleteTags", id))?;
        removed.push(Removal {
            kind: "route table tag",
            id: format!("{id} {ROUTES_TAG}={stack}"),
        });
    }

    // 3. The gateways; their addresses are released only once they are deleted.
    let live: Vec<String> = crate::prod::gateways(c, stack)
        .await?
        .into_iter()
        .map(|(_, g)| g.id)
        .collect();
    for id in &live {
        c.ec2
            .delete_nat_gateway()
            .nat_gateway_id(id)
            .send()
            .await
            .map_err(err("DeleteNatGateway", id))?;
        removed.push(Removal {
            kind: "NAT gateway",
            id: id.clone(),
        });
    }
    let deleting: Vec<String> = all_gateways
        .iter()
        .filter(|g| g.state().is_some_and(|s| s.as_str() != "deleted"))
        .filter_map(|g| g.nat_gateway_id().map(str::to_string))
        .collect();
    if !deleting.is_empty() {
        let start = Instant::now();
        loop {
            let r = c
                .ec2
                .describe_nat_gateways()
                .set_nat_gateway_ids(Some(deleting.clone()))
                .send()
                .await;
            let left: Vec<String> = match found(r, "DescribeNatGateways", stack)? {
                None => Vec::new(),
                Some(r) => r
                    .nat_gateways()
                    .iter()
                    .filter(|g| g.state().is_some_and(|s| s.as_str() != "deleted"))
                    .filter_map(|g| g.nat_gateway_id().map(str::to_string))
                    .collect(),
            };
            if left.is_empty() {
                break;
            }
            if start.elapsed() > INSTANCE_WAIT {
                return Err(Error {
                    op: "wait for NAT gateway deletion",
                    target: left.join(","),
                    source: ApiError {
                        code: None,
                        message: format!("still there after {INSTANCE_WAIT:?}"),
                    },
                });
            }
            progress(&format!(
                "waiting for {} to be deleted ({} s)",
                left.join(", "),
                start.elapsed().as_secs()
            ));
            tokio::time::sleep(POLL).await;
        }
    }

    // 4. The gateways' Elastic IPs.
    for a in stack_addresses(c, stack).await? {
        if a.tags().iter().any(|t| t.key() == Some(AZ_TAG)) {
            removed.extend(release_address(c, &a).await?);
        }
    }
    Ok(removed)
}
