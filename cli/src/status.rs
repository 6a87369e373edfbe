//! `natctl status --name STACK`: the stack's egress as it is, and whether it works:
//! the NAT instances of its group (dev), its NAT gateways per AZ (prod), and the
//! default route of each route table the stack manages.

use crate::dev::{Clients, Error, egress_tables, err, tag_value};
use crate::prod::{AZ_TAG, ROUTES_TAG};
use aws_sdk_ec2::types::Filter;
use natd::contract::STACK_TAG;
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

/// One NAT gateway of the stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gateway {
    /// `nat-...`
    pub id: String,
    /// AZ.
    pub az: String,
    /// `pending`, `available`, `failed`, `deleting`.
    pub state: String,
    /// Its public address.
    pub public_ip: Option<String>,
}

/// One private route table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteTable {
    /// `rtb-...`
    pub id: String,
    /// AZs of the subnets associated with it.
    pub azs: Vec<String>,
    /// It routes to a gateway in another AZ than its subnets'.
    pub cross_az: bool,
    /// Target of 0.0.0.0/0, if any.
    pub target: Option<String>,
    /// EC2's route state (`active`, `blackhole`).
    pub state: Option<String>,
    /// Whether it reaches the internet through one of the stack's live instances or
    /// available gateways.
    pub ok: bool,
}

/// The stack's Lambda wiring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Wiring {
    /// The function.
    pub function: String,
    /// It runs with the stack's execution role.
    pub role_attached: bool,
    /// Its subnets.
    pub subnets: Vec<String>,
    /// LambdaSG is on it.
    pub lambda_sg_attached: bool,
    /// The Secrets Manager endpoint and its state.
    pub endpoint: Option<String>,
    /// Private DNS on the endpoint.
    pub endpoint_private_dns: bool,
}

/// The stack's egress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Stack name.
    pub stack: String,
    /// NAT instances.
    pub instances: Vec<Instance>,
    /// NAT gateways.
    pub gateways: Vec<Gateway>,
    /// Tagged route tables.
    pub route_tables: Vec<RouteTable>,
    /// The Lambda wiring, when the stack has one.
    pub lambda: Option<Wiring>,
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
    let r = c
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
    let gateways: Vec<Gateway> = r
        .nat_gateways()
        .iter()
        .filter(|g| tag_value(g.tags(), STACK_TAG) == Some(stack))
        .filter(|g| g.state().is_some_and(|s| s.as_str() != "deleted"))
        .map(|g| Gateway {
            id: g.nat_gateway_id().unwrap_or_default().to_string(),
            az: tag_value(g.tags(), AZ_TAG).unwrap_or_default().to_string(),
            state: g
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            public_ip: g
                .nat_gateway_addresses()
                .first()
                .and_then(|a| a.public_ip())
                .map(str::to_string),
        })
        .collect();
    let mut tables = egress_tables(c, stack).await?;
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
        if !tables
            .iter()
            .any(|x| x.route_table_id() == t.route_table_id())
        {
            tables.push(t.clone());
        }
    }
    let subnet_ids: Vec<String> = tables
        .iter()
        .flat_map(|t| t.associations())
        .filter_map(|a| a.subnet_id().map(str::to_string))
        .collect();
    let mut subnet_az = std::collections::BTreeMap::new();
    if !subnet_ids.is_empty() {
        let r = c
            .ec2
            .describe_subnets()
            .set_subnet_ids(Some(subnet_ids))
            .send()
            .await
            .map_err(err("DescribeSubnets", stack))?;
        for s in r.subnets() {
            subnet_az.insert(
                s.subnet_id().unwrap_or_default().to_string(),
                s.availability_zone().unwrap_or_default().to_string(),
            );
        }
    }
    let mut route_tables = Vec::new();
    for t in &tables {
        let r = natd::aws::default_route(t);
        let target = r.and_then(natd::aws::route_target).map(str::to_string);
        let state = r.and_then(|r| r.state()).map(|s| s.as_str().to_string());
        let mut azs: Vec<String> = t
            .associations()
            .iter()
            .filter_map(|a| subnet_az.get(a.subnet_id()?).cloned())
            .collect();
        azs.sort();
        azs.dedup();
        let gateway = target
            .as_ref()
            .and_then(|t| gateways.iter().find(|g| &g.id == t));
        let cross_az = gateway.is_some_and(|g| azs.iter().any(|az| *az != g.az));
        let via_instance = target.as_ref().is_some_and(|t| {
            instances
                .iter()
                .any(|i| i.eni.as_ref() == Some(t) || (i.eni.is_some() && &i.id == t))
        });
        let ok = state.as_deref() == Some("active")
            && (via_instance || gateway.is_some_and(|g| g.state == "available"));
        route_tables.push(RouteTable {
            id: t.route_table_id().unwrap_or_default().to_string(),
            azs,
            cross_az,
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
        gateways,
        route_tables,
        lambda: wiring(c, stack).await?,
        healthy,
    })
}

/// Reads the stack's Lambda wiring: the function its execution role names.
async fn wiring(c: &Clients, stack: &str) -> Result<Option<Wiring>, Error> {
    use crate::lambda::FUNCTION_TAG;
    let role = format!("natd-{stack}-lambda");
    let Some(r) = crate::dev::found(
        c.iam.get_role().role_name(&role).send().await,
        "GetRole",
        &role,
    )?
    else {
        return Ok(None);
    };
    let role_arn = r.role().map(|r| r.arn().to_string()).unwrap_or_default();
    let Some(function) = crate::teardown::role_tags(c, &role)
        .await?
        .remove(FUNCTION_TAG)
    else {
        return Ok(None);
    };
    let f = crate::dev::found(
        c.lambda
            .get_function()
            .function_name(&function)
            .send()
            .await,
        "GetFunction",
        &function,
    )?;
    let conf = f.as_ref().and_then(|f| f.configuration());
    let vpc = conf.and_then(|c| c.vpc_config());
    let groups = c
        .ec2
        .describe_security_groups()
        .filters(
            Filter::builder()
                .name("group-name")
                .values(crate::lambda::Group::Lambda.name(stack))
                .build(),
        )
        .send()
        .await
        .map_err(err("DescribeSecurityGroups", stack))?;
    let lambda_sg = groups
        .security_groups()
        .first()
        .and_then(|g| g.group_id())
        .map(str::to_string);
    let endpoints = c
        .ec2
        .describe_vpc_endpoints()
        .filters(
            Filter::builder()
                .name(format!("tag:{STACK_TAG}"))
                .values(stack)
                .build(),
        )
        .send()
        .await
        .map_err(err("DescribeVpcEndpoints", stack))?;
    let e = endpoints.vpc_endpoints().first();
    Ok(Some(Wiring {
        role_attached: conf.and_then(|c| c.role()) == Some(role_arn.as_str()),
        subnets: vpc.map(|v| v.subnet_ids().to_vec()).unwrap_or_default(),
        lambda_sg_attached: lambda_sg
            .is_some_and(|id| vpc.is_some_and(|v| v.security_group_ids().contains(&id))),
        endpoint: e.map(|e| {
            format!(
                "{} ({})",
                e.vpc_endpoint_id().unwrap_or_default(),
                e.state().map(|s| s.as_str()).unwrap_or("unknown")
            )
        }),
        endpoint_private_dns: e.and_then(|e| e.private_dns_enabled()).unwrap_or(false),
        function,
    }))
}
