//! `natctl status --name STACK`: the stack's egress as it is, and whether it works:
//! the NAT instances of its group, and each tagged route table's default route.

use crate::dev::{Clients, Error, egress_tables, err};
use aws_sdk_ec2::types::Filter;
use serde::Serialize;

/// One NAT instance of the stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    /// `i-...`
    pub id: String,
    /// AZ.
    pub az: String,
    /// Auto Scaling lifecycle state.
    pub lifecycle: String,
    /// Auto Scaling health.
    pub health: String,
    /// Its primary ENI.
    pub eni: Option<String>,
}

/// One private route table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteTable {
    /// `rtb-...`
    pub id: String,
    /// Target of 0.0.0.0/0, if any.
    pub target: Option<String>,
    /// EC2's route state (`active`, `blackhole`).
    pub state: Option<String>,
    /// Whether it reaches the internet through one of the stack's live instances.
    pub ok: bool,
}

/// The stack's egress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Stack name.
    pub stack: String,
    /// NAT instances.
    pub instances: Vec<Instance>,
    /// Tagged route tables.
    pub route_tables: Vec<RouteTable>,
    /// Egress works for every table (and there is at least one).
    pub healthy: bool,
}

/// Reads the stack's status.
pub async fn read(c: &Clients, stack: &str) -> Result<Status, Error> {
    let name = format!("natd-{stack}");
    let groups = c
        .asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&name)
        .send()
        .await
        .map_err(err("DescribeAutoScalingGroups", &name))?;
    let mut instances = Vec::new();
    for g in groups.auto_scaling_groups() {
        for i in g.instances() {
            instances.push(Instance {
                id: i.instance_id().unwrap_or_default().to_string(),
                az: i.availability_zone().unwrap_or_default().to_string(),
                lifecycle: i
                    .lifecycle_state()
                    .map(|l| l.as_str().to_string())
                    .unwrap_or_default(),
                health: i.health_status().unwrap_or_default().to_string(),
                eni: None,
            });
        }
    }
    if !instances.is_empty() {
        let ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
        let r = c
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("instance-id")
                    .set_values(Some(ids))
                    .build(),
            )
            .send()
            .await
            .map_err(err("DescribeInstances", &name))?;
        for i in r.reservations().iter().flat_map(|r| r.instances()) {
            let eni = i
                .network_interfaces()
                .iter()
                .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
                .and_then(|n| n.network_interface_id());
            let live = i
                .state()
                .and_then(|s| s.name())
                .is_some_and(|n| n.as_str() == "running");
            if let Some(mine) = instances
                .iter_mut()
                .find(|m| Some(m.id.as_str()) == i.instance_id())
            {
                mine.eni = eni.filter(|_| live).map(str::to_string);
            }
        }
    }
    let tables = egress_tables(c, stack).await?;
    let mut route_tables = Vec::new();
    for t in &tables {
        let r = natd::aws::default_route(t);
        let target = r.and_then(natd::aws::route_target).map(str::to_string);
        let state = r.and_then(|r| r.state()).map(|s| s.as_str().to_string());
        let ok = state.as_deref() == Some("active")
            && target.as_ref().is_some_and(|t| {
                instances
                    .iter()
                    .any(|i| i.eni.as_ref() == Some(t) || (i.eni.is_some() && &i.id == t))
            });
        route_tables.push(RouteTable {
            id: t.route_table_id().unwrap_or_default().to_string(),
            target,
            state,
            ok,
        });
    }
    route_tables.sort_by(|a, b| a.id.cmp(&b.id));
    let healthy = !route_tables.is_empty() && route_tables.iter().all(|t| t.ok);
    Ok(Status {
        stack: stack.to_string(),
        instances,
        route_tables,
        healthy,
    })
}
