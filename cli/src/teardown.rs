//! `natctl teardown --name STACK`: removes exactly what setup created for the stack,
//! found by name *and* the `natd:stack` tag (anything else is left alone), in
//! dependency order. Idempotent: a second run finds nothing.

use crate::dev::{Clients, Error, egress_tables, err, found};
use aws_sdk_ec2::types::Filter;
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

/// Removes the stack; returns what was removed (empty when nothing was left).
pub async fn run(
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
    let tags = found(
        c.iam.list_role_tags().role_name(&name).send().await,
        "ListRoleTags",
        &name,
    )?;
    let role_is_ours = tags.is_some_and(|t| {
        t.tags()
            .iter()
            .any(|t| t.key() == STACK_TAG && t.value() == stack)
    });
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
        let policies = c
            .iam
            .list_role_policies()
            .role_name(&name)
            .send()
            .await
            .map_err(err("ListRolePolicies", &name))?;
        for p in policies.policy_names() {
            c.iam
                .delete_role_policy()
                .role_name(&name)
                .policy_name(p)
                .send()
                .await
                .map_err(err("DeleteRolePolicy", &name))?;
        }
        c.iam
            .delete_role()
            .role_name(&name)
            .send()
            .await
            .map_err(err("DeleteRole", &name))?;
        removed.push(Removal {
            kind: "IAM role",
            id: name.clone(),
        });
    }
    Ok(removed)
}
