//! Readers several parts share. Every list call goes through a paginator, so a large
//! account is read whole, and every resource found by a tag filter is checked for the
//! tag again client-side.

use super::names::{filter, of_stack, stack_filter, tag_filter, tag_value};
use super::{Clients, Error, err, found};
use aws_sdk_ec2::types::{
    Address, Filter, Instance, LaunchTemplate, NatGateway, RouteTable, SecurityGroup, Subnet,
    VpcEndpoint,
};
use std::collections::BTreeMap;

/// Which route table each subnet of a VPC uses. The one rule, for every part of natctl:
/// a subnet routes by its explicitly associated table, else by the VPC's main table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Associations {
    /// subnet -> (table, association id), for explicit associations.
    pub explicit: BTreeMap<String, (String, String)>,
    /// The VPC's main table.
    pub main: Option<String>,
}

impl Associations {
    /// From the VPC's route tables.
    pub fn from_tables(tables: &[RouteTable]) -> Self {
        let mut a = Self::default();
        for t in tables {
            let id = t.route_table_id().unwrap_or_default();
            for x in t.associations() {
                if x.main() == Some(true) {
                    a.main = Some(id.to_string());
                }
                if let (Some(s), Some(aid)) = (x.subnet_id(), x.route_table_association_id()) {
                    a.explicit
                        .insert(s.to_string(), (id.to_string(), aid.to_string()));
                }
            }
        }
        a
    }

    /// The table `subnet` routes by.
    pub fn table_of(&self, subnet: &str) -> Option<&str> {
        self.explicit
            .get(subnet)
            .map(|(t, _)| t.as_str())
            .or(self.main.as_deref())
    }
}

/// A table's default route target (`igw-`, `nat-`, `eni-`, `i-`, ...).
pub fn default_target(t: &RouteTable) -> Option<&str> {
    natd::aws::default_route(t).and_then(natd::aws::route_target)
}

/// A table's default route state (`active`, `blackhole`).
pub fn default_state(t: &RouteTable) -> Option<&str> {
    natd::aws::default_route(t)
        .and_then(|r| r.state())
        .map(|s| s.as_str())
}

/// Route tables matching `filters`.
pub async fn route_tables(
    c: &Clients,
    filters: Vec<Filter>,
    what: &str,
) -> Result<Vec<RouteTable>, Error> {
    c.ec2
        .describe_route_tables()
        .set_filters(Some(filters))
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(err("DescribeRouteTables", what))
}

/// The route tables of `vpc`.
pub async fn vpc_tables(c: &Clients, vpc: &str) -> Result<Vec<RouteTable>, Error> {
    route_tables(c, vec![filter("vpc-id", &[vpc])], vpc).await
}

/// The route tables tagged `key=value` (in any VPC of the region).
pub async fn tables_tagged(c: &Clients, key: &str, value: &str) -> Result<Vec<RouteTable>, Error> {
    let mut t = route_tables(c, vec![tag_filter(key, value)], value).await?;
    t.retain(|t| tag_value(t.tags(), key) == Some(value));
    Ok(t)
}

/// The data of launch template `id`'s default version.
pub async fn default_template_data(
    c: &Clients,
    id: &str,
) -> Result<Option<aws_sdk_ec2::types::ResponseLaunchTemplateData>, Error> {
    let v = c
        .ec2
        .describe_launch_template_versions()
        .launch_template_id(id)
        .versions("$Default")
        .send()
        .await
        .map_err(err("DescribeLaunchTemplateVersions", id))?;
    Ok(v.launch_template_versions()
        .first()
        .and_then(|v| v.launch_template_data())
        .cloned())
}

/// The boot configuration in a launch template's user data, as natctl and templates
/// write it.
fn boot_of(
    data: &aws_sdk_ec2::types::ResponseLaunchTemplateData,
) -> Option<natd_contract::boot::BootConfig> {
    let bytes = aws_smithy_types::base64::decode(data.user_data()?).ok()?;
    natd_contract::boot::BootConfig::from_cloud_config(&String::from_utf8(bytes).ok()?)
}

/// The boot configuration natd of `stack` reads: its launch template's (`natd-STACK`,
/// tagged for the stack).
pub async fn boot_config(
    c: &Clients,
    stack: &str,
) -> Result<Option<natd_contract::boot::BootConfig>, Error> {
    let name = super::names::Names(stack).nat();
    for t in launch_templates_named(c, &name).await? {
        if of_stack(t.tags(), stack) {
            let id = t.launch_template_id().unwrap_or_default();
            return Ok(default_template_data(c, id)
                .await?
                .as_ref()
                .and_then(boot_of));
        }
    }
    Ok(None)
}

/// The boot configuration of every natd launch template (`natd-STACK`, tagged
/// `natd:stack=STACK`), by stack: how doctor learns the route tables a stack made by a
/// template names (untagged).
pub async fn boot_configs(
    c: &Clients,
) -> Result<BTreeMap<String, natd_contract::boot::BootConfig>, Error> {
    let templates: Vec<LaunchTemplate> = c
        .ec2
        .describe_launch_templates()
        .filters(
            Filter::builder()
                .name("tag-key")
                .values(natd_contract::STACK_TAG)
                .build(),
        )
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(err("DescribeLaunchTemplates", natd_contract::STACK_TAG))?;
    let mut out = BTreeMap::new();
    for t in templates {
        let Some(stack) = tag_value(t.tags(), natd_contract::STACK_TAG) else {
            continue;
        };
        // natd's own template is named for its stack (the lock's is not).
        if t.launch_template_name() != Some(super::names::Names(stack).nat().as_str()) {
            continue;
        }
        let id = t.launch_template_id().unwrap_or_default();
        if let Some(b) = default_template_data(c, id)
            .await?
            .as_ref()
            .and_then(boot_of)
        {
            out.insert(stack.to_string(), b);
        }
    }
    Ok(out)
}

/// The route tables of `stack`'s natd: those tagged `natd:egress=<stack>` and those
/// its boot configuration names, once each.
pub async fn egress_tables(c: &Clients, stack: &str) -> Result<Vec<RouteTable>, Error> {
    let mut tables = tables_tagged(c, natd_contract::EGRESS_TAG, stack).await?;
    let named = boot_config(c, stack)
        .await?
        .map(|b| b.route_tables)
        .unwrap_or_default();
    let missing: Vec<&str> = named
        .iter()
        .map(String::as_str)
        .filter(|id| !tables.iter().any(|t| t.route_table_id() == Some(*id)))
        .collect();
    if !missing.is_empty() {
        tables.extend(route_tables(c, vec![filter("route-table-id", &missing)], stack).await?);
    }
    Ok(tables)
}

/// The subnets matching `filters`.
pub async fn subnets(c: &Clients, filters: Vec<Filter>, what: &str) -> Result<Vec<Subnet>, Error> {
    c.ec2
        .describe_subnets()
        .set_filters(Some(filters))
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(err("DescribeSubnets", what))
}

/// The security groups matching `filters`.
pub async fn security_groups(
    c: &Clients,
    filters: Vec<Filter>,
    what: &str,
) -> Result<Vec<SecurityGroup>, Error> {
    c.ec2
        .describe_security_groups()
        .set_filters(Some(filters))
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(err("DescribeSecurityGroups", what))
}

/// The security groups of `vpc` named one of `names`, the stack's and others' alike
/// (a same-named group of someone else is a conflict the caller reports).
pub async fn groups_named(
    c: &Clients,
    vpc: Option<&str>,
    names: &[&str],
) -> Result<Vec<SecurityGroup>, Error> {
    let mut f = vec![filter("group-name", names)];
    if let Some(v) = vpc {
        f.push(filter("vpc-id", &[v]));
    }
    security_groups(c, f, &names.join(",")).await
}

/// The NAT gateways matching `filters`, deleted ones included.
pub async fn nat_gateways(
    c: &Clients,
    filters: Vec<Filter>,
    what: &str,
) -> Result<Vec<NatGateway>, Error> {
    c.ec2
        .describe_nat_gateways()
        .set_filter(Some(filters))
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(err("DescribeNatGateways", what))
}

/// The NAT gateways `ids` (gone ones are simply absent).
pub async fn nat_gateways_by_id(c: &Clients, ids: &[String]) -> Result<Vec<NatGateway>, Error> {
    let r = c
        .ec2
        .describe_nat_gateways()
        .set_nat_gateway_ids(Some(ids.to_vec()))
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await;
    Ok(found(r, "DescribeNatGateways", &ids.join(","))?.unwrap_or_default())
}

/// The stack's NAT gateways (by tag), deleted ones included.
pub async fn stack_gateways(c: &Clients, stack: &str) -> Result<Vec<NatGateway>, Error> {
    let mut g = nat_gateways(c, vec![stack_filter(stack)], stack).await?;
    g.retain(|g| of_stack(g.tags(), stack));
    Ok(g)
}

/// The instances matching `filters`.
pub async fn instances(
    c: &Clients,
    filters: Vec<Filter>,
    what: &str,
) -> Result<Vec<Instance>, Error> {
    let reservations = c
        .ec2
        .describe_instances()
        .set_filters(Some(filters))
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(err("DescribeInstances", what))?;
    Ok(reservations
        .into_iter()
        .flat_map(|r| r.instances.unwrap_or_default())
        .collect())
}

/// The stack's instances (by tag), terminated ones included.
pub async fn stack_instances(c: &Clients, stack: &str) -> Result<Vec<Instance>, Error> {
    let mut i = instances(c, vec![stack_filter(stack)], stack).await?;
    i.retain(|i| of_stack(i.tags(), stack));
    Ok(i)
}

/// Whether an instance is gone for good.
pub fn terminated(i: &Instance) -> bool {
    i.state()
        .and_then(|s| s.name())
        .is_some_and(|n| n.as_str() == "terminated")
}

/// The launch templates named `name`, the stack's and others' alike.
pub async fn launch_templates_named(c: &Clients, name: &str) -> Result<Vec<LaunchTemplate>, Error> {
    c.ec2
        .describe_launch_templates()
        .filters(filter("launch-template-name", &[name]))
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(err("DescribeLaunchTemplates", name))
}

/// The VPC endpoints matching `filters` that are not being deleted.
pub async fn vpc_endpoints(
    c: &Clients,
    filters: Vec<Filter>,
    what: &str,
) -> Result<Vec<VpcEndpoint>, Error> {
    let mut e = c
        .ec2
        .describe_vpc_endpoints()
        .set_filters(Some(filters))
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(err("DescribeVpcEndpoints", what))?;
    e.retain(|e| {
        e.state().is_none_or(|s| {
            !matches!(
                s.as_str().to_ascii_lowercase().as_str(),
                "deleted" | "deleting"
            )
        })
    });
    Ok(e)
}

/// The stack's Elastic IPs (by tag). DescribeAddresses has no pages: it answers all.
pub async fn stack_addresses(c: &Clients, stack: &str) -> Result<Vec<Address>, Error> {
    let r = c
        .ec2
        .describe_addresses()
        .filters(stack_filter(stack))
        .send()
        .await
        .map_err(err("DescribeAddresses", stack))?;
    Ok(r.addresses()
        .iter()
        .filter(|a| of_stack(a.tags(), stack))
        .cloned()
        .collect())
}

/// An Elastic IP, as a removal needs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AddressState {
    /// `eipalloc-...`
    pub allocation_id: String,
    /// Its association, when associated.
    pub association_id: Option<String>,
    /// Its address.
    pub public_ip: String,
}

impl From<&Address> for AddressState {
    fn from(a: &Address) -> Self {
        Self {
            allocation_id: a.allocation_id().unwrap_or_default().to_string(),
            association_id: a.association_id().map(str::to_string),
            public_ip: a.public_ip().unwrap_or_default().to_string(),
        }
    }
}

/// Whether an Auto Scaling group's tags carry `natd:stack=stack`.
pub fn group_of_stack(g: &aws_sdk_autoscaling::types::AutoScalingGroup, stack: &str) -> bool {
    g.tags()
        .iter()
        .any(|t| t.key() == Some(super::names::STACK_TAG) && t.value() == Some(stack))
}

/// The Auto Scaling group named `name`, if any.
pub async fn auto_scaling_group(
    c: &Clients,
    name: &str,
) -> Result<Option<aws_sdk_autoscaling::types::AutoScalingGroup>, Error> {
    let groups = c
        .asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(err("DescribeAutoScalingGroups", name))?;
    Ok(groups.into_iter().next())
}

/// Decodes IAM's percent-encoded policy documents.
pub fn decode_policy(doc: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&percent_encoding::percent_decode_str(doc).decode_utf8_lossy()).ok()
}

/// The IAM role `name`: (ARN, tags), or `None`.
pub async fn role(
    c: &Clients,
    name: &str,
) -> Result<Option<(String, BTreeMap<String, String>)>, Error> {
    let Some(r) = found(
        c.iam.get_role().role_name(name).send().await,
        "GetRole",
        name,
    )?
    else {
        return Ok(None);
    };
    let arn = r.role().map(|r| r.arn().to_string()).unwrap_or_default();
    let tags = c
        .iam
        .list_role_tags()
        .role_name(name)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await;
    let tags = found(tags, "ListRoleTags", name)?
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.key, t.value))
        .collect();
    Ok(Some((arn, tags)))
}

/// The inline policy `policy` of role `role`, decoded.
pub async fn role_policy(
    c: &Clients,
    role: &str,
    policy: &str,
) -> Result<Option<serde_json::Value>, Error> {
    let p = c
        .iam
        .get_role_policy()
        .role_name(role)
        .policy_name(policy)
        .send()
        .await;
    Ok(found(p, "GetRolePolicy", role)?.and_then(|p| decode_policy(p.policy_document())))
}

/// Deletes IAM role `role` and its inline policies.
pub async fn delete_role(c: &Clients, role: &str) -> Result<(), Error> {
    let names = c
        .iam
        .list_role_policies()
        .role_name(role)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await;
    for p in found(names, "ListRolePolicies", role)?.unwrap_or_default() {
        let r = c
            .iam
            .delete_role_policy()
            .role_name(role)
            .policy_name(&p)
            .send()
            .await;
        found(r, "DeleteRolePolicy", role)?;
    }
    let r = c.iam.delete_role().role_name(role).send().await;
    found(r, "DeleteRole", role)?;
    Ok(())
}

/// Releases an Elastic IP, disassociating it first. (The few writes several parts
/// share live here with the readers.)
pub async fn release_address(c: &Clients, a: &AddressState) -> Result<(), Error> {
    let allocation_id = a.allocation_id.as_str();
    if let Some(assoc) = &a.association_id {
        let r = c
            .ec2
            .disassociate_address()
            .association_id(assoc)
            .send()
            .await;
        found(r, "DisassociateAddress", allocation_id)?;
    }
    let r = c
        .ec2
        .release_address()
        .allocation_id(allocation_id)
        .send()
        .await;
    found(r, "ReleaseAddress", allocation_id)?;
    Ok(())
}

/// Deletes `table`'s default route (gone already is fine).
pub async fn delete_default_route(c: &Clients, table: &str) -> Result<(), Error> {
    let r = c
        .ec2
        .delete_route()
        .route_table_id(table)
        .destination_cidr_block(natd_contract::DEFAULT_ROUTE)
        .send()
        .await;
    found(r, "DeleteRoute", table)?;
    Ok(())
}

/// Removes tag `key` from `resource`.
pub async fn untag(c: &Clients, resource: &str, key: &str) -> Result<(), Error> {
    c.ec2
        .delete_tags()
        .resources(resource)
        .tags(aws_sdk_ec2::types::Tag::builder().key(key).build())
        .send()
        .await
        .map_err(err("DeleteTags", resource))?;
    Ok(())
}
