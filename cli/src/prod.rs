//! `natctl setup --env prod`: one Elastic IP and NAT gateway per AZ, in that AZ's
//! public subnet, and every private subnet routing 0.0.0.0/0 to the gateway of its own
//! AZ. A route table shared by private subnets of several AZs is split: a new table per
//! AZ gets its default route first, then the AZ's subnets move to it, so no subnet is
//! ever without a default route. [`plan`] decides from what exists (pure); [`read`] and
//! [`apply`] are the EC2 adapters.
//!
//! Tags: gateways, addresses and split tables carry `natd:stack` and `natd:az`; every
//! table whose default route the stack manages carries `natd:routes=<stack>`; a split
//! table also names the table its subnets came from in `natd:split-from`, so teardown
//! can put them back.

use crate::dev::{Clients, Error, err, tag_value};
use natd::cloud::ApiError;
use natd::contract::{DEFAULT_ROUTE, EGRESS_TAG, STACK_TAG};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Tag on every route table whose default route a prod stack manages.
pub const ROUTES_TAG: &str = "natd:routes";
/// Tag naming the AZ of a gateway, its address, or a split table.
pub const AZ_TAG: &str = "natd:az";
/// Tag on a split table naming the table its subnets used before.
pub const SPLIT_TAG: &str = "natd:split-from";
/// How long setup waits for NAT gateways to become available (AWS: 1-5 minutes).
const GATEWAY_WAIT: Duration = Duration::from_secs(900);
const POLL: Duration = Duration::from_secs(2);

/// A private subnet and the table it routes by today.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrivateSubnet {
    /// `subnet-...`
    pub id: String,
    /// The table it routes by (its association, else the main table).
    pub table: String,
    /// That table also serves private subnets of another AZ.
    pub shared: bool,
}

/// One AZ of the prod egress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AzSpec {
    /// Where the AZ's NAT gateway goes.
    pub public_subnet: String,
    /// The AZ's private subnets.
    pub private: Vec<PrivateSubnet>,
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spec {
    /// Stack name.
    pub stack: String,
    /// The VPC.
    pub vpc: String,
    /// By AZ name.
    pub azs: BTreeMap<String, AzSpec>,
    /// When switching from dev: how long the NAT instance stays after the routes moved,
    /// so connections through it finish and route changes propagate.
    pub drain_secs: u64,
}

/// A NAT gateway of the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// `nat-...`
    pub id: String,
    /// `pending`, `available`, ...
    pub state: String,
}

/// A route table as prod cares about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableObs {
    /// `natd:egress` tag value.
    pub egress_tag: Option<String>,
    /// `natd:routes` tag value.
    pub routes_tag: Option<String>,
    /// Target of its default route.
    pub default_target: Option<String>,
}

/// A split table of the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// `rtb-...`
    pub id: String,
    /// Target of its default route.
    pub default_target: Option<String>,
}

/// What exists now, as read by [`read`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The stack's Elastic IP allocation per AZ.
    pub addresses: BTreeMap<String, String>,
    /// The stack's live (pending or available) NAT gateway per AZ.
    pub gateways: BTreeMap<String, Gateway>,
    /// The stack's split tables, by (AZ, table split from).
    pub splits: BTreeMap<(String, String), Split>,
    /// Every table of the VPC.
    pub tables: BTreeMap<String, TableObs>,
    /// Explicit subnet associations: subnet -> (association id, table).
    pub associations: BTreeMap<String, (String, String)>,
    /// The stack's dev egress that is still there (switching from dev).
    pub dev_left: Vec<String>,
}

/// A route table an action works on: one that exists, or the split table of an AZ.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableRef {
    /// An existing table.
    Existing(String),
    /// The stack's table for `az`, split from `from`.
    Split {
        /// AZ.
        az: String,
        /// The shared table.
        from: String,
    },
}

/// One change prod setup makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Allocate the AZ's Elastic IP.
    AllocateAddress {
        /// AZ.
        az: String,
    },
    /// Create the AZ's NAT gateway in `subnet`.
    CreateNatGateway {
        /// AZ.
        az: String,
        /// Public subnet.
        subnet: String,
    },
    /// Wait until the gateways of these AZs are available.
    WaitForGateways {
        /// AZs.
        azs: Vec<String>,
    },
    /// Create the AZ's own table for the subnets of a shared table.
    CreateAzTable {
        /// AZ.
        az: String,
        /// The shared table.
        from: String,
    },
    /// Remove `natd:egress` from a table so no natd takes its route back.
    ReleaseFromNatd {
        /// The table.
        route_table: String,
    },
    /// Point 0.0.0.0/0 of a table at the AZ's NAT gateway.
    SetDefaultRoute {
        /// The table.
        route_table: TableRef,
        /// AZ of the gateway.
        az: String,
    },
    /// Tag a table `natd:routes=<stack>`.
    TagRoutes {
        /// The table.
        route_table: String,
    },
    /// Associate a subnet with its AZ's split table.
    MoveSubnet {
        /// The subnet.
        subnet: String,
        /// AZ.
        az: String,
        /// The shared table it leaves.
        from: String,
    },
    /// Remove the stack's dev egress (NAT instance group, template, role, SG).
    RemoveDevEgress {
        /// What is left of it.
        parts: Vec<String>,
    },
}

/// Why prod setup refuses to go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A private route table belongs to another stack.
    #[error(
        "route table {table} is tagged {tag}={other}; remove that stack first or leave its subnets out"
    )]
    TableOfOtherStack {
        /// The table.
        table: String,
        /// The tag.
        tag: &'static str,
        /// The other stack.
        other: String,
    },
}

/// The changes that turn `o` into `spec`, in an order that never leaves a private
/// subnet without a default route.
pub fn plan(spec: &Spec, o: &Observed) -> Result<Vec<Action>, Refusal> {
    let mut addresses = Vec::new();
    let mut gateways = Vec::new();
    let mut wait = Vec::new();
    let mut new_tables = BTreeSet::new();
    let mut release = BTreeSet::new();
    let mut routes = BTreeSet::new();
    let mut tag = BTreeSet::new();
    let mut moves = Vec::new();
    for (az, z) in &spec.azs {
        let gw = o.gateways.get(az);
        match gw {
            None => {
                if !o.addresses.contains_key(az) {
                    addresses.push(Action::AllocateAddress { az: az.clone() });
                }
                gateways.push(Action::CreateNatGateway {
                    az: az.clone(),
                    subnet: z.public_subnet.clone(),
                });
                wait.push(az.clone());
            }
            Some(g) if g.state != "available" => wait.push(az.clone()),
            Some(_) => {}
        }
        let gw_id = gw.map(|g| g.id.as_str());
        for s in &z.private {
            let t = o.tables.get(&s.table).cloned().unwrap_or_default();
            for (key, value) in [(EGRESS_TAG, &t.egress_tag), (ROUTES_TAG, &t.routes_tag)] {
                if let Some(other) = value.as_ref().filter(|v| **v != spec.stack) {
                    return Err(Refusal::TableOfOtherStack {
                        table: s.table.clone(),
                        tag: key,
                        other: other.clone(),
                    });
                }
            }
            // A table split earlier (and a run interrupted before every subnet moved)
            // keeps its split: the remaining subnets move too.
            let key = (az.clone(), s.table.clone());
            if s.shared || o.splits.contains_key(&key) {
                let split = o.splits.get(&key);
                if split.is_none() {
                    new_tables.insert(key.clone());
                }
                if split.and_then(|t| t.default_target.as_deref()) != gw_id || gw_id.is_none() {
                    routes.insert((
                        TableRef::Split {
                            az: az.clone(),
                            from: s.table.clone(),
                        },
                        az.clone(),
                    ));
                }
                let here = o.associations.get(&s.id).map(|(_, t)| t.as_str());
                if split.is_none() || here != split.map(|t| t.id.as_str()) {
                    moves.push(Action::MoveSubnet {
                        subnet: s.id.clone(),
                        az: az.clone(),
                        from: s.table.clone(),
                    });
                }
            } else {
                if t.egress_tag.is_some() {
                    release.insert(s.table.clone());
                }
                if t.default_target.as_deref() != gw_id || gw_id.is_none() {
                    routes.insert((TableRef::Existing(s.table.clone()), az.clone()));
                }
                if t.routes_tag.is_none() {
                    tag.insert(s.table.clone());
                }
            }
        }
    }
    let mut out = addresses;
    out.extend(gateways);
    if !wait.is_empty() {
        out.push(Action::WaitForGateways { azs: wait });
    }
    out.extend(
        new_tables
            .into_iter()
            .map(|(az, from)| Action::CreateAzTable { az, from }),
    );
    out.extend(
        release
            .into_iter()
            .map(|route_table| Action::ReleaseFromNatd { route_table }),
    );
    out.extend(
        routes
            .into_iter()
            .map(|(route_table, az)| Action::SetDefaultRoute { route_table, az }),
    );
    out.extend(
        tag.into_iter()
            .map(|route_table| Action::TagRoutes { route_table }),
    );
    out.extend(moves);
    if !o.dev_left.is_empty() {
        out.push(Action::RemoveDevEgress {
            parts: o.dev_left.clone(),
        });
    }
    Ok(out)
}

fn stack_filter(stack: &str) -> aws_sdk_ec2::types::Filter {
    aws_sdk_ec2::types::Filter::builder()
        .name(format!("tag:{STACK_TAG}"))
        .values(stack)
        .build()
}

/// The stack's NAT gateways that are not deleted: (AZ, gateway).
pub async fn gateways(c: &Clients, stack: &str) -> Result<Vec<(String, Gateway)>, Error> {
    let r = c
        .ec2
        .describe_nat_gateways()
        .filter(stack_filter(stack))
        .send()
        .await
        .map_err(err("DescribeNatGateways", stack))?;
    Ok(r.nat_gateways()
        .iter()
        .filter(|g| tag_value(g.tags(), STACK_TAG) == Some(stack))
        .filter_map(|g| {
            let state = g
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            if !matches!(state.as_str(), "pending" | "available") {
                return None;
            }
            let az = tag_value(g.tags(), AZ_TAG)?.to_string();
            Some((
                az,
                Gateway {
                    id: g.nat_gateway_id().unwrap_or_default().to_string(),
                    state,
                },
            ))
        })
        .collect())
}

/// Reads what exists of the stack's prod egress in `spec.vpc`.
pub async fn read(c: &Clients, spec: &Spec) -> Result<Observed, Error> {
    let mut o = Observed::default();
    let addrs = c
        .ec2
        .describe_addresses()
        .filters(stack_filter(&spec.stack))
        .send()
        .await
        .map_err(err("DescribeAddresses", &spec.stack))?;
    for a in addrs.addresses() {
        if tag_value(a.tags(), STACK_TAG) != Some(spec.stack.as_str()) {
            continue;
        }
        if let (Some(az), Some(id)) = (tag_value(a.tags(), AZ_TAG), a.allocation_id()) {
            o.addresses.insert(az.to_string(), id.to_string());
        }
    }
    o.gateways = gateways(c, &spec.stack).await?.into_iter().collect();
    let tables = c
        .ec2
        .describe_route_tables()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("vpc-id")
                .values(&spec.vpc)
                .build(),
        )
        .send()
        .await
        .map_err(err("DescribeRouteTables", &spec.vpc))?;
    for t in tables.route_tables() {
        let id = t.route_table_id().unwrap_or_default().to_string();
        let default_target = natd::aws::default_route(t)
            .and_then(natd::aws::route_target)
            .map(str::to_string);
        for a in t.associations() {
            if let (Some(s), Some(aid)) = (a.subnet_id(), a.route_table_association_id()) {
                o.associations
                    .insert(s.to_string(), (aid.to_string(), id.clone()));
            }
        }
        if tag_value(t.tags(), STACK_TAG) == Some(spec.stack.as_str())
            && let (Some(az), Some(from)) =
                (tag_value(t.tags(), AZ_TAG), tag_value(t.tags(), SPLIT_TAG))
        {
            o.splits.insert(
                (az.to_string(), from.to_string()),
                Split {
                    id: id.clone(),
                    default_target: default_target.clone(),
                },
            );
        }
        o.tables.insert(
            id,
            TableObs {
                egress_tag: tag_value(t.tags(), EGRESS_TAG).map(str::to_string),
                routes_tag: tag_value(t.tags(), ROUTES_TAG).map(str::to_string),
                default_target,
            },
        );
    }
    o.dev_left = crate::teardown::dev_parts(c, &spec.stack).await?;
    Ok(o)
}

fn ec2_tags(
    kind: aws_sdk_ec2::types::ResourceType,
    spec: &Spec,
    az: &str,
    extra: &[(&str, &str)],
) -> aws_sdk_ec2::types::TagSpecification {
    use aws_sdk_ec2::types::{Tag, TagSpecification};
    let mut b = TagSpecification::builder()
        .resource_type(kind)
        .tags(Tag::builder().key(STACK_TAG).value(&spec.stack).build())
        .tags(Tag::builder().key(AZ_TAG).value(az).build())
        .tags(
            Tag::builder()
                .key("Name")
                .value(format!("natd-{}-{az}", spec.stack))
                .build(),
        );
    for (k, v) in extra {
        b = b.tags(Tag::builder().key(*k).value(*v).build());
    }
    b.build()
}

/// Waits until the gateways `ids` (AZ -> id) are available, reporting their states.
pub async fn wait_available(
    c: &Clients,
    ids: &BTreeMap<String, String>,
    progress: &mut impl FnMut(&str),
) -> Result<(), Error> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let r = c
            .ec2
            .describe_nat_gateways()
            .set_nat_gateway_ids(Some(ids.values().cloned().collect()))
            .send()
            .await
            .map_err(err("DescribeNatGateways", &format!("{ids:?}")))?;
        let mut pending = Vec::new();
        for g in r.nat_gateways() {
            let id = g.nat_gateway_id().unwrap_or_default();
            let state = g.state().map(|s| s.as_str()).unwrap_or("unknown");
            match state {
                "available" => {}
                "pending" => pending.push(format!("{id} pending")),
                other => {
                    return Err(Error {
                        op: "wait for NAT gateway",
                        target: id.to_string(),
                        source: ApiError {
                            code: g.failure_code().map(str::to_string),
                            message: format!(
                                "state {other}: {}",
                                g.failure_message().unwrap_or("no reason given")
                            ),
                        },
                    });
                }
            }
        }
        if pending.is_empty() {
            progress(&format!(
                "NAT gateway(s) available after {:.0?}",
                start.elapsed()
            ));
            return Ok(());
        }
        let line = pending.join(", ");
        if line != last || start.elapsed().as_secs() % 30 < POLL.as_secs() {
            progress(&format!(
                "waiting for {line} ({} s)",
                start.elapsed().as_secs()
            ));
            last = line;
        }
        if start.elapsed() > GATEWAY_WAIT {
            return Err(Error {
                op: "wait for NAT gateway",
                target: last,
                source: ApiError {
                    code: None,
                    message: format!("not available after {GATEWAY_WAIT:?}"),
                },
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits `secs` before the old egress of a switch goes: route changes reach every
/// host within seconds on AWS, and connections already open finish meanwhile.
pub async fn drain(secs: u64, progress: &mut impl FnMut(&str)) {
    if secs > 0 {
        progress(&format!(
            "routes moved; keeping the old egress {secs} s for open connections to drain"
        ));
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}

/// Carries out `actions` in order.
pub async fn apply(
    c: &Clients,
    spec: &Spec,
    o: &Observed,
    actions: &[Action],
    progress: &mut impl FnMut(&str),
) -> Result<(), Error> {
    use aws_sdk_ec2::types::{DomainType, ResourceType, Tag};
    let mut addresses = o.addresses.clone();
    let mut gws: BTreeMap<String, String> = o
        .gateways
        .iter()
        .map(|(az, g)| (az.clone(), g.id.clone()))
        .collect();
    let mut splits: BTreeMap<(String, String), String> = o
        .splits
        .iter()
        .map(|(k, s)| (k.clone(), s.id.clone()))
        .collect();
    let has_default = |r: &TableRef| match r {
        TableRef::Existing(id) => o.tables.get(id).is_some_and(|t| t.default_target.is_some()),
        TableRef::Split { az, from } => o
            .splits
            .get(&(az.clone(), from.clone()))
            .is_some_and(|s| s.default_target.is_some()),
    };
    for a in actions {
        match a {
            Action::AllocateAddress { az } => {
                let r = c
                    .ec2
                    .allocate_address()
                    .domain(DomainType::Vpc)
                    .tag_specifications(ec2_tags(ResourceType::ElasticIp, spec, az, &[]))
                    .send()
                    .await
                    .map_err(err("AllocateAddress", az))?;
                addresses.insert(
                    az.clone(),
                    r.allocation_id().unwrap_or_default().to_string(),
                );
            }
            Action::CreateNatGateway { az, subnet } => {
                let alloc = addresses.get(az).cloned().unwrap_or_default();
                let r = c
                    .ec2
                    .create_nat_gateway()
                    .subnet_id(subnet)
                    .allocation_id(&alloc)
                    .tag_specifications(ec2_tags(ResourceType::Natgateway, spec, az, &[]))
                    .send()
                    .await
                    .map_err(err("CreateNatGateway", subnet))?;
                let id = r
                    .nat_gateway()
                    .and_then(|g| g.nat_gateway_id())
                    .unwrap_or_default()
                    .to_string();
                progress(&format!("created NAT gateway {id} in {subnet} ({az})"));
                gws.insert(az.clone(), id);
            }
            Action::WaitForGateways { azs } => {
                let ids = azs
                    .iter()
                    .filter_map(|az| Some((az.clone(), gws.get(az)?.clone())))
                    .collect();
                wait_available(c, &ids, progress).await?;
            }
            Action::CreateAzTable { az, from } => {
                let r = c
                    .ec2
                    .create_route_table()
                    .vpc_id(&spec.vpc)
                    .tag_specifications(ec2_tags(
                        ResourceType::RouteTable,
                        spec,
                        az,
                        &[(SPLIT_TAG, from), (ROUTES_TAG, &spec.stack)],
                    ))
                    .send()
                    .await
                    .map_err(err("CreateRouteTable", &spec.vpc))?;
                let id = r
                    .route_table()
                    .and_then(|t| t.route_table_id())
                    .unwrap_or_default()
                    .to_string();
                splits.insert((az.clone(), from.clone()), id);
            }
            Action::ReleaseFromNatd { route_table } => {
                c.ec2
                    .delete_tags()
                    .resources(route_table)
                    .tags(Tag::builder().key(EGRESS_TAG).build())
                    .send()
                    .await
                    .map_err(err("DeleteTags", route_table))?;
            }
            Action::SetDefaultRoute { route_table, az } => {
                let table = match route_table {
                    TableRef::Existing(id) => id.clone(),
                    TableRef::Split { az, from } => splits
                        .get(&(az.clone(), from.clone()))
                        .cloned()
                        .unwrap_or_default(),
                };
                let gw = gws.get(az).cloned().unwrap_or_default();
                if has_default(route_table) {
                    c.ec2
                        .replace_route()
                        .route_table_id(&table)
                        .destination_cidr_block(DEFAULT_ROUTE)
                        .nat_gateway_id(&gw)
                        .send()
                        .await
                        .map_err(err("ReplaceRoute", &table))?;
                } else {
                    c.ec2
                        .create_route()
                        .route_table_id(&table)
                        .destination_cidr_block(DEFAULT_ROUTE)
                        .nat_gateway_id(&gw)
                        .send()
                        .await
                        .map_err(err("CreateRoute", &table))?;
                }
            }
            Action::TagRoutes { route_table } => {
                c.ec2
                    .create_tags()
                    .resources(route_table)
                    .tags(Tag::builder().key(ROUTES_TAG).value(&spec.stack).build())
                    .send()
                    .await
                    .map_err(err("CreateTags", route_table))?;
            }
            Action::MoveSubnet { subnet, az, from } => {
                let table = splits
                    .get(&(az.clone(), from.clone()))
                    .cloned()
                    .unwrap_or_default();
                match o.associations.get(subnet) {
                    Some((assoc, _)) => {
                        c.ec2
                            .replace_route_table_association()
                            .association_id(assoc)
                            .route_table_id(&table)
                            .send()
                            .await
                            .map_err(err("ReplaceRouteTableAssociation", subnet))?;
                    }
                    None => {
                        c.ec2
                            .associate_route_table()
                            .subnet_id(subnet)
                            .route_table_id(&table)
                            .send()
                            .await
                            .map_err(err("AssociateRouteTable", subnet))?;
                    }
                }
            }
            Action::RemoveDevEgress { .. } => {
                drain(spec.drain_secs, progress).await;
                let removed = crate::teardown::remove_dev(c, &spec.stack, progress).await?;
                for r in removed {
                    progress(&format!("removed {} {}", r.kind, r.id));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        let az = |public: &str, private: &[(&str, &str, bool)]| AzSpec {
            public_subnet: public.into(),
            private: private
                .iter()
                .map(|(id, table, shared)| PrivateSubnet {
                    id: (*id).into(),
                    table: (*table).into(),
                    shared: *shared,
                })
                .collect(),
        };
        Spec {
            stack: "p".into(),
            vpc: "vpc-1".into(),
            drain_secs: 0,
            azs: [
                (
                    "a".to_string(),
                    az(
                        "pub-a",
                        &[("priv-a", "rtb-main", true), ("priv-a2", "rtb-a", false)],
                    ),
                ),
                (
                    "b".to_string(),
                    az("pub-b", &[("priv-b", "rtb-main", true)]),
                ),
            ]
            .into(),
        }
    }

    fn gw(id: &str) -> Gateway {
        Gateway {
            id: id.into(),
            state: "available".into(),
        }
    }

    #[test]
    fn fresh_vpc_gets_gateways_first_then_routes_then_moves() {
        let p = plan(&spec(), &Observed::default()).expect("plan");
        let pos = |f: &dyn Fn(&Action) -> bool| p.iter().position(f).expect("present");
        let wait = pos(&|a| matches!(a, Action::WaitForGateways { .. }));
        let first_route = pos(&|a| matches!(a, Action::SetDefaultRoute { .. }));
        let first_move = pos(&|a| matches!(a, Action::MoveSubnet { .. }));
        let last_gateway = p
            .iter()
            .rposition(|a| matches!(a, Action::CreateNatGateway { .. }))
            .expect("gateways");
        assert!(last_gateway < wait && wait < first_route && first_route < first_move);
        assert_eq!(
            p.iter()
                .filter(|a| matches!(a, Action::CreateAzTable { .. }))
                .count(),
            2,
            "the shared table is split once per AZ: {p:?}"
        );
        assert!(p.contains(&Action::SetDefaultRoute {
            route_table: TableRef::Existing("rtb-a".into()),
            az: "a".into()
        }));
        assert!(p.contains(&Action::TagRoutes {
            route_table: "rtb-a".into()
        }));
    }

    #[test]
    fn built_stack_needs_nothing() {
        let s = spec();
        let mut o = Observed::default();
        for (az, id) in [("a", "nat-a"), ("b", "nat-b")] {
            o.addresses.insert(az.into(), format!("eipalloc-{az}"));
            o.gateways.insert(az.into(), gw(id));
            o.splits.insert(
                (az.into(), "rtb-main".into()),
                Split {
                    id: format!("rtb-split-{az}"),
                    default_target: Some(id.into()),
                },
            );
        }
        o.associations
            .insert("priv-a".into(), ("x".into(), "rtb-split-a".into()));
        o.associations
            .insert("priv-b".into(), ("y".into(), "rtb-split-b".into()));
        o.tables.insert(
            "rtb-a".into(),
            TableObs {
                egress_tag: None,
                routes_tag: Some("p".into()),
                default_target: Some("nat-a".into()),
            },
        );
        assert_eq!(plan(&s, &o).expect("plan"), vec![]);
        // A cross-AZ route is drift: it goes back to the AZ's own gateway.
        o.tables.get_mut("rtb-a").expect("a").default_target = Some("nat-b".into());
        assert_eq!(
            plan(&s, &o).expect("plan"),
            vec![Action::SetDefaultRoute {
                route_table: TableRef::Existing("rtb-a".into()),
                az: "a".into()
            }]
        );
    }

    #[test]
    fn from_dev_releases_natd_tables_before_routing_and_removes_dev_last() {
        let s = spec();
        let mut o = Observed::default();
        o.tables.insert(
            "rtb-a".into(),
            TableObs {
                egress_tag: Some("p".into()),
                routes_tag: None,
                default_target: Some("eni-natd".into()),
            },
        );
        o.dev_left = vec!["auto scaling group natd-p".into()];
        let p = plan(&s, &o).expect("plan");
        let release = p
            .iter()
            .position(|a| matches!(a, Action::ReleaseFromNatd { .. }))
            .expect("release");
        let route = p
            .iter()
            .position(|a| {
                *a == Action::SetDefaultRoute {
                    route_table: TableRef::Existing("rtb-a".into()),
                    az: "a".into(),
                }
            })
            .expect("route");
        assert!(release < route);
        assert!(matches!(p.last(), Some(Action::RemoveDevEgress { .. })));
    }

    #[test]
    fn another_stacks_table_is_refused() {
        let mut o = Observed::default();
        o.tables.insert(
            "rtb-a".into(),
            TableObs {
                routes_tag: Some("other".into()),
                ..TableObs::default()
            },
        );
        assert_eq!(
            plan(&spec(), &o).expect_err("refused"),
            Refusal::TableOfOtherStack {
                table: "rtb-a".into(),
                tag: ROUTES_TAG,
                other: "other".into()
            }
        );
    }
}
