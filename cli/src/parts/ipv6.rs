//! IPv6 egress without NAT (`setup --ipv6`): an egress-only internet gateway in the VPC
//! (free: no hourly or per-GB processing charge), a `::/0` route to it in each private
//! route table, and, when the VPC or a private subnet has no IPv6 CIDR block, the
//! Amazon-provided blocks, but only with `--add-ipv6-cidrs` (it changes the user's
//! network). The function's `Ipv6AllowedForDualStack` and LambdaSG's IPv6 egress are
//! the Lambda part's.
//!
//! What setup added is recorded where it was added, so teardown removes that and
//! nothing else: the gateway carries the stack's tag; a route table whose `::/0` route
//! setup made carries [`IPV6_ROUTE_TAG`]; a VPC or subnet whose IPv6 block setup
//! associated carries [`IPV6_CIDR_TAG`]. An egress-only gateway the VPC already had is
//! used, never removed.
//!
//! Owns: [`Spec`], [`Observed`], [`Action`], the pure [`plan`], [`read`], [`apply`];
//! [`Existing`], the pure [`plan_remove`] and [`remove`].

use super::Progress;
use crate::aws::names::{STACK_TAG, ec2_tag, ec2_tags, filter, stack_filter, tag_filter};
use crate::aws::wait::{self, Poll};
use crate::aws::{Clients, Error, err, found};
use natd_contract::{IPV6_CIDR_TAG, IPV6_DEFAULT_ROUTE, IPV6_ROUTE_TAG};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spec {
    /// Stack name.
    pub stack: String,
    /// The VPC.
    pub vpc: String,
    /// The private subnets and their route tables.
    pub private: BTreeMap<String, String>,
    /// Associate Amazon-provided IPv6 blocks with the VPC and the private subnets that
    /// have none (`--add-ipv6-cidrs`).
    pub add_cidrs: bool,
}

impl Spec {
    /// The private subnets' route tables.
    pub fn tables(&self) -> BTreeSet<String> {
        self.private.values().cloned().collect()
    }
}

/// An egress-only internet gateway in the VPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gateway {
    /// `eigw-...`
    pub id: String,
    /// The stack made it (teardown deletes it).
    pub ours: bool,
}

/// What exists now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The VPC's IPv6 block, when it has one associated.
    pub vpc_block: Option<String>,
    /// Each private subnet's IPv6 block.
    pub subnet_blocks: BTreeMap<String, Option<String>>,
    /// The egress-only gateway to use: the stack's, else one the VPC has.
    pub gateway: Option<Gateway>,
    /// Each private table's `::/0` target, when it has that route.
    pub routes: BTreeMap<String, Option<String>>,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Associate an Amazon-provided IPv6 /56 with the VPC.
    AssociateVpcBlock,
    /// Associate the next free /64 of the VPC's block with a subnet.
    AssociateSubnetBlock {
        /// `subnet-...`
        subnet: String,
    },
    /// Create the stack's egress-only internet gateway.
    CreateGateway,
    /// Add `::/0` to the gateway in a route table.
    CreateRoute {
        /// `rtb-...`
        table: String,
    },
}

/// Why setup refuses IPv6 egress.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// IPv6 blocks are missing and `--add-ipv6-cidrs` was not given.
    #[error(
        "--ipv6: {what} no IPv6 CIDR block; --add-ipv6-cidrs associates {how} (this changes your network; `natctl plan` lists each association), or add them yourself"
    )]
    NoBlocks {
        /// What lacks one, in words.
        what: String,
        /// What the flag would do.
        how: String,
    },
    /// A private table already sends `::/0` elsewhere.
    #[error(
        "--ipv6: route table {table} already sends ::/0 to {target}; natctl does not replace a route it did not make: delete it, or run without --ipv6"
    )]
    RouteTaken {
        /// `rtb-...`
        table: String,
        /// Its target.
        target: String,
    },
}

/// The changes that turn `o` into `spec`.
pub fn plan(spec: &Spec, o: &Observed) -> Result<Vec<Action>, Refusal> {
    let mut out = Vec::new();
    let bare: Vec<&String> = spec
        .private
        .keys()
        .filter(|s| o.subnet_blocks.get(*s).is_none_or(Option::is_none))
        .collect();
    if o.vpc_block.is_none() || !bare.is_empty() {
        if !spec.add_cidrs {
            let subnets = bare
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let (what, how) = match (&o.vpc_block, bare.len()) {
                (None, _) => (
                    format!("VPC {} and its private subnets ({subnets}) have", spec.vpc),
                    "an Amazon-provided /56 with the VPC and a /64 of it with each private subnet"
                        .to_string(),
                ),
                (Some(b), 1) => (
                    format!("private subnet {subnets} has"),
                    format!("a /64 of the VPC's {b} with it"),
                ),
                (Some(b), _) => (
                    format!("private subnets {subnets} have"),
                    format!("a /64 of the VPC's {b} with each"),
                ),
            };
            return Err(Refusal::NoBlocks { what, how });
        }
        if o.vpc_block.is_none() {
            out.push(Action::AssociateVpcBlock);
        }
        out.extend(
            bare.into_iter()
                .map(|s| Action::AssociateSubnetBlock { subnet: s.clone() }),
        );
    }
    if o.gateway.is_none() {
        out.push(Action::CreateGateway);
    }
    for table in spec.tables() {
        match o.routes.get(&table).cloned().flatten() {
            None => out.push(Action::CreateRoute { table }),
            Some(t) if o.gateway.as_ref().is_some_and(|g| g.id == t) => {}
            Some(target) => return Err(Refusal::RouteTaken { table, target }),
        }
    }
    Ok(out)
}

/// A VPC's associated IPv6 block: (association id, block). EC2 lists blocks being or
/// already disassociated too, for a while.
pub fn vpc_ipv6(v: &aws_sdk_ec2::types::Vpc) -> Option<(String, String)> {
    associated(v.ipv6_cidr_block_association_set().iter().map(|a| {
        (
            a.ipv6_cidr_block_state()
                .and_then(|s| s.state())
                .map(|s| s.as_str()),
            a.association_id(),
            a.ipv6_cidr_block(),
        )
    }))
}

/// A subnet's associated IPv6 block: (association id, block).
pub fn subnet_ipv6(s: &aws_sdk_ec2::types::Subnet) -> Option<(String, String)> {
    associated(s.ipv6_cidr_block_association_set().iter().map(|a| {
        (
            a.ipv6_cidr_block_state()
                .and_then(|s| s.state())
                .map(|s| s.as_str()),
            a.association_id(),
            a.ipv6_cidr_block(),
        )
    }))
}

/// The first (association id, block) of `blocks` (state, id, block) in state
/// `associated` (VPC and subnet associations are different SDK types).
fn associated<'a>(
    blocks: impl Iterator<Item = (Option<&'a str>, Option<&'a str>, Option<&'a str>)>,
) -> Option<(String, String)> {
    blocks
        .filter(|(state, _, _)| *state == Some("associated"))
        .find_map(|(_, id, block)| Some((id?.to_string(), block?.to_string())))
}

/// The VPC's associated IPv6 block: (association id, block).
async fn vpc_block(c: &Clients, vpc: &str) -> Result<Option<(String, String)>, Error> {
    let r = c
        .ec2
        .describe_vpcs()
        .vpc_ids(vpc)
        .send()
        .await
        .map_err(err("DescribeVpcs", vpc))?;
    Ok(r.vpcs().first().and_then(vpc_ipv6))
}

/// The IPv6 blocks of the VPC's subnets: subnet -> (association id, block).
async fn subnet_blocks(
    c: &Clients,
    vpc: &str,
) -> Result<BTreeMap<String, (String, String)>, Error> {
    let r = c
        .ec2
        .describe_subnets()
        .filters(filter("vpc-id", &[vpc]))
        .send()
        .await
        .map_err(err("DescribeSubnets", vpc))?;
    Ok(r.subnets()
        .iter()
        .filter_map(|s| Some((s.subnet_id()?.to_string(), subnet_ipv6(s)?)))
        .collect())
}

/// The egress-only gateways attached to `vpc`: (id, the stack's).
async fn gateways(c: &Clients, vpc: &str, stack: &str) -> Result<Vec<Gateway>, Error> {
    let r = c
        .ec2
        .describe_egress_only_internet_gateways()
        .send()
        .await
        .map_err(err("DescribeEgressOnlyInternetGateways", vpc))?;
    Ok(r.egress_only_internet_gateways()
        .iter()
        .filter(|g| g.attachments().iter().any(|a| a.vpc_id() == Some(vpc)))
        .filter_map(|g| {
            Some(Gateway {
                id: g.egress_only_internet_gateway_id()?.to_string(),
                ours: g
                    .tags()
                    .iter()
                    .any(|t| t.key() == Some(STACK_TAG) && t.value() == Some(stack)),
            })
        })
        .collect())
}

/// Each table's `::/0` target.
pub async fn ipv6_routes(
    c: &Clients,
    tables: &BTreeSet<String>,
) -> Result<BTreeMap<String, Option<String>>, Error> {
    if tables.is_empty() {
        return Ok(BTreeMap::new());
    }
    let r = c
        .ec2
        .describe_route_tables()
        .set_route_table_ids(Some(tables.iter().cloned().collect()))
        .send()
        .await
        .map_err(err("DescribeRouteTables", "the private route tables"))?;
    let mut out: BTreeMap<String, Option<String>> =
        tables.iter().map(|t| (t.clone(), None)).collect();
    for t in r.route_tables() {
        let target = t
            .routes()
            .iter()
            .find(|r| r.destination_ipv6_cidr_block() == Some(IPV6_DEFAULT_ROUTE))
            .map(|r| {
                r.egress_only_internet_gateway_id()
                    .or(r.gateway_id())
                    .or(r.nat_gateway_id())
                    .or(r.network_interface_id())
                    .or(r.instance_id())
                    .or(r.transit_gateway_id())
                    .or(r.vpc_peering_connection_id())
                    .unwrap_or("a target no longer there (blackhole)")
                    .to_string()
            });
        if let Some(id) = t.route_table_id() {
            out.insert(id.to_string(), target);
        }
    }
    Ok(out)
}

/// Reads what exists.
pub async fn read(c: &Clients, spec: &Spec) -> Result<Observed, Error> {
    let blocks = subnet_blocks(c, &spec.vpc).await?;
    let found = gateways(c, &spec.vpc, &spec.stack).await?;
    let gateway = found.iter().find(|g| g.ours).or(found.first()).cloned();
    Ok(Observed {
        vpc_block: vpc_block(c, &spec.vpc).await?.map(|(_, b)| b),
        subnet_blocks: spec
            .private
            .keys()
            .map(|s| (s.clone(), blocks.get(s).map(|(_, b)| b.clone())))
            .collect(),
        gateway,
        routes: ipv6_routes(c, &spec.tables()).await?,
    })
}

/// The first /64 of `vpc_block` (a /56) that no block in `used` overlaps.
pub fn next_block(vpc_block: &str, used: &[String]) -> Option<String> {
    let net: ipnet::Ipv6Net = vpc_block.parse().ok()?;
    let used: Vec<ipnet::Ipv6Net> = used.iter().filter_map(|u| u.parse().ok()).collect();
    net.subnets(64)
        .ok()?
        .find(|s| !used.iter().any(|u| u.contains(s) || s.contains(u)))
        .map(|s| s.to_string())
}

/// How long an IPv6 block takes to be associated.
const ASSOCIATE_WAIT: Duration = Duration::from_secs(120);

/// Carries out `actions` in order.
pub async fn apply(
    c: &Clients,
    spec: &Spec,
    o: &Observed,
    actions: &[Action],
    progress: Progress<'_>,
) -> Result<(), Error> {
    use aws_sdk_ec2::types::ResourceType;
    let mut gateway = o.gateway.as_ref().map(|g| g.id.clone());
    for a in actions {
        match a {
            Action::AssociateVpcBlock => {
                progress(&format!(
                    "associating an Amazon-provided IPv6 /56 with {}",
                    spec.vpc
                ));
                // The record first: a run cut between the two leaves a tag teardown
                // clears, never a block nobody would remove.
                c.ec2
                    .create_tags()
                    .resources(&spec.vpc)
                    .tags(ec2_tag(IPV6_CIDR_TAG, &spec.stack))
                    .send()
                    .await
                    .map_err(err("CreateTags", &spec.vpc))?;
                c.ec2
                    .associate_vpc_cidr_block()
                    .vpc_id(&spec.vpc)
                    .amazon_provided_ipv6_cidr_block(true)
                    .send()
                    .await
                    .map_err(err("AssociateVpcCidrBlock", &spec.vpc))?;
                let block = wait::until(
                    "the VPC's IPv6 block",
                    &spec.vpc,
                    ASSOCIATE_WAIT,
                    progress,
                    || async {
                        Ok(match vpc_block(c, &spec.vpc).await? {
                            Some((_, b)) => Poll::Ready(b),
                            None => Poll::Waiting("associating".into()),
                        })
                    },
                )
                .await?;
                progress(&format!("{} has IPv6 {block}", spec.vpc));
            }
            Action::AssociateSubnetBlock { subnet } => {
                let Some((_, vpc)) = vpc_block(c, &spec.vpc).await? else {
                    return Err(Error::Missing {
                        what: "IPv6 block of VPC",
                        target: spec.vpc.clone(),
                    });
                };
                let used: Vec<String> = subnet_blocks(c, &spec.vpc)
                    .await?
                    .into_values()
                    .map(|(_, b)| b)
                    .collect();
                let block = next_block(&vpc, &used).ok_or_else(|| Error::Failed {
                    what: "subnet",
                    target: subnet.clone(),
                    reason: format!("every /64 of the VPC's {vpc} is taken"),
                })?;
                progress(&format!("associating IPv6 {block} with {subnet}"));
                c.ec2
                    .create_tags()
                    .resources(subnet)
                    .tags(ec2_tag(IPV6_CIDR_TAG, &spec.stack))
                    .send()
                    .await
                    .map_err(err("CreateTags", subnet))?;
                c.ec2
                    .associate_subnet_cidr_block()
                    .subnet_id(subnet)
                    .ipv6_cidr_block(&block)
                    .send()
                    .await
                    .map_err(err("AssociateSubnetCidrBlock", subnet))?;
                wait::until(
                    "the subnet's IPv6 block",
                    subnet,
                    ASSOCIATE_WAIT,
                    progress,
                    || async {
                        Ok(if subnet_blocks(c, &spec.vpc).await?.contains_key(subnet) {
                            Poll::Ready(())
                        } else {
                            Poll::Waiting("associating".into())
                        })
                    },
                )
                .await?;
            }
            Action::CreateGateway => {
                let r = c
                    .ec2
                    .create_egress_only_internet_gateway()
                    .vpc_id(&spec.vpc)
                    .tag_specifications(ec2_tags(
                        ResourceType::EgressOnlyInternetGateway,
                        &spec.stack,
                        &format!("natd-{}-ipv6", spec.stack),
                        &[],
                    ))
                    .send()
                    .await
                    .map_err(err("CreateEgressOnlyInternetGateway", &spec.vpc))?;
                let id = r
                    .egress_only_internet_gateway()
                    .and_then(|g| g.egress_only_internet_gateway_id())
                    .unwrap_or_default()
                    .to_string();
                progress(&format!(
                    "egress-only internet gateway {id} in {}",
                    spec.vpc
                ));
                gateway = Some(id);
            }
            Action::CreateRoute { table } => {
                let id = gateway.clone().unwrap_or_default();
                c.ec2
                    .create_tags()
                    .resources(table)
                    .tags(ec2_tag(IPV6_ROUTE_TAG, &spec.stack))
                    .send()
                    .await
                    .map_err(err("CreateTags", table))?;
                c.ec2
                    .create_route()
                    .route_table_id(table)
                    .destination_ipv6_cidr_block(IPV6_DEFAULT_ROUTE)
                    .egress_only_internet_gateway_id(&id)
                    .send()
                    .await
                    .map_err(err("CreateRoute", table))?;
                progress(&format!("{table}: ::/0 now targets {id}"));
            }
        }
    }
    Ok(())
}

/// What exists of the part, for its removal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    /// Tables whose `::/0` route the stack made (tagged [`IPV6_ROUTE_TAG`]).
    pub routes: Vec<String>,
    /// The stack's egress-only gateway.
    pub gateway: Option<String>,
    /// Subnets whose IPv6 block the stack associated: (subnet, association id).
    pub subnet_blocks: Vec<(String, Option<String>)>,
    /// The VPC, when the stack associated its IPv6 block: (vpc, association id).
    pub vpc_block: Option<(String, Option<String>)>,
}

/// One removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Removal {
    /// Delete the `::/0` route the stack made, and its tag.
    Route {
        /// `rtb-...`
        table: String,
    },
    /// Delete the stack's egress-only gateway.
    Gateway {
        /// `eigw-...`
        id: String,
    },
    /// Disassociate the IPv6 block the stack gave a subnet, and its tag.
    SubnetBlock {
        /// `subnet-...`
        subnet: String,
        /// The association (`None`: already gone; only the tag goes).
        association: Option<String>,
    },
    /// Disassociate the IPv6 block the stack gave the VPC, and its tag.
    VpcBlock {
        /// `vpc-...`
        vpc: String,
        /// The association.
        association: Option<String>,
    },
}

/// Reads what exists of the stack's part.
pub async fn read_existing(c: &Clients, stack: &str) -> Result<Existing, Error> {
    let tables = c
        .ec2
        .describe_route_tables()
        .filters(tag_filter(IPV6_ROUTE_TAG, stack))
        .send()
        .await
        .map_err(err("DescribeRouteTables", stack))?;
    let gateways = c
        .ec2
        .describe_egress_only_internet_gateways()
        .filters(stack_filter(stack))
        .send()
        .await
        .map_err(err("DescribeEgressOnlyInternetGateways", stack))?;
    let subnets = c
        .ec2
        .describe_subnets()
        .filters(tag_filter(IPV6_CIDR_TAG, stack))
        .send()
        .await
        .map_err(err("DescribeSubnets", stack))?;
    let vpcs = c
        .ec2
        .describe_vpcs()
        .filters(tag_filter(IPV6_CIDR_TAG, stack))
        .send()
        .await
        .map_err(err("DescribeVpcs", stack))?;
    Ok(Existing {
        routes: tables
            .route_tables()
            .iter()
            .filter_map(|t| t.route_table_id().map(str::to_string))
            .collect(),
        gateway: gateways
            .egress_only_internet_gateways()
            .iter()
            .find_map(|g| g.egress_only_internet_gateway_id().map(str::to_string)),
        subnet_blocks: subnets
            .subnets()
            .iter()
            .filter_map(|s| Some((s.subnet_id()?.to_string(), subnet_ipv6(s).map(|(a, _)| a))))
            .collect(),
        vpc_block: vpcs
            .vpcs()
            .first()
            .and_then(|v| Some((v.vpc_id()?.to_string(), vpc_ipv6(v).map(|(a, _)| a)))),
    })
}

/// The removals that take `e` away: routes first (they use the gateway), the gateway,
/// then the subnets' blocks before the VPC's (a VPC block goes only once no subnet
/// uses it).
pub fn plan_remove(e: &Existing) -> Vec<Removal> {
    let mut out: Vec<Removal> = e
        .routes
        .iter()
        .map(|t| Removal::Route { table: t.clone() })
        .collect();
    if let Some(id) = &e.gateway {
        out.push(Removal::Gateway { id: id.clone() });
    }
    out.extend(e.subnet_blocks.iter().map(|(s, a)| Removal::SubnetBlock {
        subnet: s.clone(),
        association: a.clone(),
    }));
    if let Some((vpc, a)) = &e.vpc_block {
        out.push(Removal::VpcBlock {
            vpc: vpc.clone(),
            association: a.clone(),
        });
    }
    out
}

/// Carries out `removals` in order.
pub async fn remove(
    c: &Clients,
    removals: &[Removal],
    progress: Progress<'_>,
) -> Result<(), Error> {
    for r in removals {
        match r {
            Removal::Route { table } => {
                let routes = ipv6_routes(c, &BTreeSet::from([table.clone()])).await?;
                // Only a route to an egress-only gateway is the stack's kind of route.
                if routes
                    .get(table)
                    .cloned()
                    .flatten()
                    .is_some_and(|t| t.starts_with("eigw-"))
                {
                    let r = c
                        .ec2
                        .delete_route()
                        .route_table_id(table)
                        .destination_ipv6_cidr_block(IPV6_DEFAULT_ROUTE)
                        .send()
                        .await;
                    found(r, "DeleteRoute", table)?;
                }
                crate::aws::read::untag(c, table, IPV6_ROUTE_TAG).await?;
            }
            Removal::Gateway { id } => {
                let r = c
                    .ec2
                    .delete_egress_only_internet_gateway()
                    .egress_only_internet_gateway_id(id)
                    .send()
                    .await;
                found(r, "DeleteEgressOnlyInternetGateway", id)?;
            }
            Removal::SubnetBlock {
                subnet,
                association,
            } => {
                if let Some(a) = association {
                    progress(&format!("disassociating {subnet}'s IPv6 block"));
                    let r = c
                        .ec2
                        .disassociate_subnet_cidr_block()
                        .association_id(a)
                        .send()
                        .await;
                    found(r, "DisassociateSubnetCidrBlock", subnet)?;
                }
                crate::aws::read::untag(c, subnet, IPV6_CIDR_TAG).await?;
            }
            Removal::VpcBlock { vpc, association } => {
                if let Some(a) = association {
                    progress(&format!("disassociating {vpc}'s IPv6 block"));
                    let r = c
                        .ec2
                        .disassociate_vpc_cidr_block()
                        .association_id(a)
                        .send()
                        .await;
                    found(r, "DisassociateVpcCidrBlock", vpc)?;
                }
                crate::aws::read::untag(c, vpc, IPV6_CIDR_TAG).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(add: bool) -> Spec {
        Spec {
            stack: "s".into(),
            vpc: "vpc-1".into(),
            private: BTreeMap::from([
                ("subnet-a".into(), "rtb-a".into()),
                ("subnet-b".into(), "rtb-a".into()),
                ("subnet-c".into(), "rtb-c".into()),
            ]),
            add_cidrs: add,
        }
    }

    fn dual_stack() -> Observed {
        Observed {
            vpc_block: Some("2600:1f18:1:a00::/56".into()),
            subnet_blocks: ["subnet-a", "subnet-b", "subnet-c"]
                .iter()
                .enumerate()
                .map(|(i, s)| (s.to_string(), Some(format!("2600:1f18:1:a0{i}::/64"))))
                .collect(),
            gateway: None,
            routes: BTreeMap::new(),
        }
    }

    #[test]
    fn a_dual_stack_vpc_gets_a_gateway_and_a_route_per_table_then_nothing() {
        let o = dual_stack();
        assert_eq!(
            plan(&spec(false), &o).expect("plan"),
            vec![
                Action::CreateGateway,
                Action::CreateRoute {
                    table: "rtb-a".into()
                },
                Action::CreateRoute {
                    table: "rtb-c".into()
                },
            ]
        );
        let built = Observed {
            gateway: Some(Gateway {
                id: "eigw-1".into(),
                ours: true,
            }),
            routes: BTreeMap::from([
                ("rtb-a".into(), Some("eigw-1".into())),
                ("rtb-c".into(), Some("eigw-1".into())),
            ]),
            ..o
        };
        assert_eq!(plan(&spec(false), &built).expect("plan"), vec![]);
    }

    #[test]
    fn missing_blocks_are_refused_naming_them_unless_asked_to_add() {
        let mut o = dual_stack();
        o.subnet_blocks.insert("subnet-c".into(), None);
        let e = plan(&spec(false), &o).expect_err("refused").to_string();
        assert!(e.contains("private subnet subnet-c has no IPv6"), "{e}");
        assert!(e.contains("--add-ipv6-cidrs"), "{e}");
        assert_eq!(
            plan(&spec(true), &o).expect("plan")[0],
            Action::AssociateSubnetBlock {
                subnet: "subnet-c".into()
            }
        );
        let bare = Observed::default();
        let e = plan(&spec(false), &bare).expect_err("refused").to_string();
        assert!(e.contains("VPC vpc-1"), "{e}");
        assert!(e.contains("subnet-a, subnet-b, subnet-c"), "{e}");
        let p = plan(&spec(true), &bare).expect("plan");
        assert_eq!(p[0], Action::AssociateVpcBlock);
        assert_eq!(p.len(), 1 + 3 + 1 + 2);
    }

    #[test]
    fn a_route_to_something_else_is_not_replaced_and_the_vpc_s_gateway_is_used() {
        let mut o = dual_stack();
        o.gateway = Some(Gateway {
            id: "eigw-theirs".into(),
            ours: false,
        });
        o.routes.insert("rtb-a".into(), Some("eigw-theirs".into()));
        assert_eq!(
            plan(&spec(false), &o).expect("plan"),
            vec![Action::CreateRoute {
                table: "rtb-c".into()
            }]
        );
        o.routes.insert("rtb-c".into(), Some("igw-1".into()));
        let e = plan(&spec(false), &o).expect_err("refused").to_string();
        assert!(e.contains("rtb-c") && e.contains("igw-1"), "{e}");
    }

    #[test]
    fn next_block_skips_the_used_ones() {
        let used = vec![
            "2600:1f18:1:a00::/64".to_string(),
            "2600:1f18:1:a02::/64".into(),
        ];
        assert_eq!(
            next_block("2600:1f18:1:a00::/56", &used).as_deref(),
            Some("2600:1f18:1:a01::/64")
        );
        assert_eq!(next_block("nonsense", &used), None);
    }

    #[test]
    fn removal_takes_routes_then_gateway_then_subnet_blocks_then_the_vpc_s() {
        let e = Existing {
            routes: vec!["rtb-a".into()],
            gateway: Some("eigw-1".into()),
            subnet_blocks: vec![("subnet-a".into(), Some("subnet-cidr-assoc-1".into()))],
            vpc_block: Some(("vpc-1".into(), Some("vpc-cidr-assoc-1".into()))),
        };
        let p = plan_remove(&e);
        assert!(matches!(p[0], Removal::Route { .. }));
        assert!(matches!(p[1], Removal::Gateway { .. }));
        assert!(matches!(p[2], Removal::SubnetBlock { .. }));
        assert!(matches!(p[3], Removal::VpcBlock { .. }));
        assert_eq!(plan_remove(&Existing::default()), vec![]);
    }
}
