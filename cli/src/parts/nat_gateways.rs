//! The prod egress: one Elastic IP and NAT gateway per AZ, in that AZ's public subnet,
//! and every private subnet routing 0.0.0.0/0 to the gateway of its own AZ. A route
//! table shared by private subnets of several AZs is split: a new table per AZ gets its
//! default route first, then the AZ's subnets move to it, so no subnet is ever without
//! a default route.
//!
//! Owns: [`Spec`] (from the topology), [`Observed`], [`Action`], the pure [`plan`],
//! [`read`], [`apply`]; what it leaves behind: [`Existing`], the pure [`plan_remove`]
//! and [`remove`].
//!
//! Regional mode: one regional NAT gateway (`AvailabilityMode=regional`, no subnet, AWS-
//! provided addresses) for every private subnet; it is keyed by the AZ name
//! [`REGIONAL`]. A switch between the modes is the new gateway available, every table
//! routed to it, then the old gateways (and their addresses) retired ([`retiring`]).
//!
//! Tags: gateways, addresses and split tables carry `natd:stack` and `natd:az`; every
//! table whose default route the stack manages carries `natd:routes=<stack>`; a split
//! table also names the table its subnets came from in `natd:split-from`, so teardown
//! can put them back.

use super::Progress;
use crate::aws::names::{
    AZ_TAG, EGRESS_TAG, Names, ROUTES_TAG, SPLIT_TAG, ec2_tag, ec2_tags, of_stack, tag_filter,
    tag_value,
};
use crate::aws::read::{self, AddressState, Associations};
use crate::aws::wait::{self, Poll};
use crate::aws::{Clients, Error, err, found};
use crate::topology::Topology;
use natd_contract::DEFAULT_ROUTE;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long setup waits for NAT gateways to become available (AWS: 1-5 minutes).
const GATEWAY_WAIT: Duration = Duration::from_secs(900);
/// How long teardown waits for NAT gateways to be deleted (AWS: about a minute).
const DELETE_WAIT: Duration = Duration::from_secs(600);

/// The `natd:az` value (and the key in [`Spec::azs`]) of the regional NAT gateway.
pub const REGIONAL: &str = "regional";

/// Zonal (one gateway per AZ) or regional (one for the VPC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One NAT gateway in a public subnet of each AZ.
    Zonal,
    /// One regional NAT gateway.
    Regional,
}

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
    /// Zonal or regional.
    pub mode: Mode,
    /// By AZ name; regional: the one entry [`REGIONAL`], with every private subnet.
    pub azs: BTreeMap<String, AzSpec>,
}

impl Spec {
    /// The spec for `topo`: a gateway in each AZ's first public subnet, for that AZ's
    /// private subnets (an AZ without public subnet has been refused by the topology).
    pub fn new(stack: &str, topo: &Topology) -> Self {
        let mut azs = BTreeMap::new();
        for (az, z) in &topo.azs {
            // An AZ with no private subnet of the stack (--private-subnets naming
            // others) gets no gateway and no Elastic IP: nothing would route to it.
            if z.private.is_empty() {
                continue;
            }
            let Some(public_subnet) = z.public.first().cloned() else {
                continue;
            };
            let private = z
                .private
                .iter()
                .map(|id| {
                    let table = topo
                        .subnets
                        .get(id)
                        .map(|s| s.table.clone())
                        .unwrap_or_default();
                    PrivateSubnet {
                        id: id.clone(),
                        shared: topo.shared_private_tables.contains(&table),
                        table,
                    }
                })
                .collect();
            azs.insert(
                az.clone(),
                AzSpec {
                    public_subnet,
                    private,
                },
            );
        }
        Spec {
            stack: stack.to_string(),
            vpc: topo.vpc_id.clone(),
            mode: Mode::Zonal,
            azs,
        }
    }

    /// The regional spec for `topo`: one gateway for the VPC, every private subnet's
    /// table routed to it (a table shared by several AZs stays shared: one gateway
    /// serves them all in their own AZs).
    pub fn regional(stack: &str, topo: &Topology) -> Self {
        let private = topo
            .azs
            .values()
            .flat_map(|z| &z.private)
            .map(|id| PrivateSubnet {
                id: id.clone(),
                table: topo
                    .subnets
                    .get(id)
                    .map(|s| s.table.clone())
                    .unwrap_or_default(),
                shared: false,
            })
            .collect();
        Spec {
            stack: stack.to_string(),
            vpc: topo.vpc_id.clone(),
            mode: Mode::Regional,
            azs: [(
                REGIONAL.to_string(),
                AzSpec {
                    public_subnet: String::new(),
                    private,
                },
            )]
            .into(),
        }
    }

    /// The existing tables this spec routes in place (a shared table is split instead,
    /// and its subnets leave it).
    pub fn tables(&self) -> BTreeSet<String> {
        self.azs
            .values()
            .flat_map(|z| &z.private)
            .filter(|s| !s.shared)
            .map(|s| s.table.clone())
            .collect()
    }
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
    /// Explicit subnet associations: subnet -> (table, association id).
    pub associations: BTreeMap<String, (String, String)>,
    /// Live gateways and Elastic IPs of the stack beyond one per AZ (made by something
    /// else than this run, e.g. two runs of an older natctl at once): reported, never
    /// used.
    pub duplicates: Vec<String>,
    /// The stack's gateways (and their addresses) the spec no longer has: the other
    /// mode's after a switch, or an AZ's without private subnets. Retired once the
    /// routes moved.
    pub retiring: Existing,
    /// Gateways that would retire but a table outside the stack still routes to:
    /// kept, and reported.
    pub kept: Vec<String>,
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
    /// Create the regional NAT gateway of the VPC.
    CreateRegionalNatGateway {
        /// The VPC.
        vpc: String,
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
}

/// Why prod setup refuses to go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A private route table belongs to another stack.
    #[error(
        "route table {table} is tagged {tag}={other}: it belongs to stack {other}; remove that stack first or leave its subnets out"
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
            None if spec.mode == Mode::Regional => {
                gateways.push(Action::CreateRegionalNatGateway {
                    vpc: spec.vpc.clone(),
                });
                wait.push(az.clone());
            }
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
                let here = o.associations.get(&s.id).map(|(t, _)| t.as_str());
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
    Ok(out)
}

/// The stack's live NAT gateways by AZ, from what EC2 answered, and the ones beyond the
/// first of an AZ (duplicates: a stack has one per AZ). Of several, the one a route
/// table already uses is the AZ's (so a re-run moves no route), else an available one,
/// else the first by id.
fn live_by_az(
    gateways: &[aws_sdk_ec2::types::NatGateway],
    routed: &BTreeSet<String>,
) -> (BTreeMap<String, Gateway>, Vec<String>) {
    let mut by_az: BTreeMap<String, Vec<Gateway>> = BTreeMap::new();
    for g in gateways {
        let state = g
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        if !matches!(state.as_str(), "pending" | "available") {
            continue;
        }
        let Some(az) = tag_value(g.tags(), AZ_TAG) else {
            continue;
        };
        by_az.entry(az.to_string()).or_default().push(Gateway {
            id: g.nat_gateway_id().unwrap_or_default().to_string(),
            state,
        });
    }
    let mut live = BTreeMap::new();
    let mut duplicates = Vec::new();
    for (az, mut gws) in by_az {
        let rank = |g: &Gateway| {
            (
                !routed.contains(&g.id),
                g.state != "available",
                g.id.clone(),
            )
        };
        gws.sort_by_key(rank);
        let mut gws = gws.into_iter();
        if let Some(first) = gws.next() {
            duplicates
                .extend(gws.map(|g| format!("NAT gateway {} ({az}, also {})", g.id, first.id)));
            live.insert(az, first);
        }
    }
    (live, duplicates)
}

/// Reads what exists of the stack's prod egress in `spec.vpc`.
pub async fn read(c: &Clients, spec: &Spec) -> Result<Observed, Error> {
    let stack = spec.stack.as_str();
    let mut o = Observed::default();
    let tables = read::vpc_tables(c, &spec.vpc).await?;
    let routed: BTreeSet<String> = tables
        .iter()
        .filter_map(|t| read::default_target(t).map(str::to_string))
        .collect();
    let gateways = read::stack_gateways(c, stack).await?;
    (o.gateways, o.duplicates) = live_by_az(&gateways, &routed);
    let mut addresses = read::stack_addresses(c, stack).await?;
    // The address a gateway uses comes first: of several in an AZ, that one is the AZ's.
    addresses.sort_by_key(|a| a.association_id().is_none());
    for a in &addresses {
        if let (Some(az), Some(id)) = (tag_value(a.tags(), AZ_TAG), a.allocation_id()) {
            match o.addresses.get(az) {
                None => {
                    o.addresses.insert(az.to_string(), id.to_string());
                }
                Some(first) => o
                    .duplicates
                    .push(format!("Elastic IP {id} ({az}, also {first})")),
            }
        }
    }
    o.associations = Associations::from_tables(&tables).explicit;
    (o.retiring, o.kept) = retiring(
        &existing_from(stack, &gateways, &addresses, &tables),
        spec,
        &foreign_routes(spec, &tables),
    );
    for t in &tables {
        let id = t.route_table_id().unwrap_or_default().to_string();
        let default_target = read::default_target(t).map(str::to_string);
        if of_stack(t.tags(), stack)
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
    Ok(o)
}

/// The default routes of tables the stack neither manages nor routes: gateway -> table.
fn foreign_routes(
    spec: &Spec,
    tables: &[aws_sdk_ec2::types::RouteTable],
) -> BTreeMap<String, String> {
    let ours = spec.tables();
    tables
        .iter()
        .filter(|t| tag_value(t.tags(), ROUTES_TAG) != Some(spec.stack.as_str()))
        .filter(|t| !ours.contains(t.route_table_id().unwrap_or_default()))
        .filter_map(|t| {
            Some((
                read::default_target(t)?.to_string(),
                t.route_table_id()?.to_string(),
            ))
        })
        .collect()
}

/// What the stack has that `spec` no longer wants, read now (after a switch moved the
/// routes), with the gateways kept for a foreign table.
pub async fn read_retiring(c: &Clients, spec: &Spec) -> Result<(Existing, Vec<String>), Error> {
    let stack = spec.stack.as_str();
    let tables = read::vpc_tables(c, &spec.vpc).await?;
    let e = existing_from(
        stack,
        &read::stack_gateways(c, stack).await?,
        &read::stack_addresses(c, stack).await?,
        &tables,
    );
    Ok(retiring(&e, spec, &foreign_routes(spec, &tables)))
}

/// What of `e` the spec no longer has: gateways keyed by an AZ not in the spec, the
/// addresses of those AZs, and the managed tables outside the spec that still route to
/// them (their default route goes, as a split-out shared table's does). A gateway a
/// foreign table still routes to (`routed`: gateway -> table) stays, with its address,
/// and is reported.
pub fn retiring(
    e: &Existing,
    spec: &Spec,
    routed: &BTreeMap<String, String>,
) -> (Existing, Vec<String>) {
    let mut out = Existing::default();
    let mut kept = Vec::new();
    let mut kept_azs = BTreeSet::new();
    let ours = spec.tables();
    for g in e.gateways.iter().filter(|g| !spec.azs.contains_key(&g.az)) {
        match routed.get(&g.id) {
            Some(table) if g.state != "deleting" => {
                kept.push(format!(
                    "NAT gateway {} ({}) stays: route table {table}, outside the stack's subnets, still sends 0.0.0.0/0 to it",
                    g.id, g.az
                ));
                kept_azs.insert(g.az.clone());
            }
            _ => out.gateways.push(g.clone()),
        }
    }
    for a in &e.addresses {
        let Some(az) = e.address_azs.get(&a.allocation_id) else {
            continue;
        };
        if !spec.azs.contains_key(az) && !kept_azs.contains(az) {
            out.addresses.push(a.clone());
            out.address_azs.insert(a.allocation_id.clone(), az.clone());
        }
    }
    let going: BTreeSet<&String> = out.gateways.iter().map(|g| &g.id).collect();
    for t in &e.managed {
        if !t.split && !ours.contains(&t.id) && t.target.as_ref().is_some_and(|g| going.contains(g))
        {
            out.managed.push(t.clone());
        }
    }
    (out, kept)
}

/// Whether the stack's prod egress is a regional NAT gateway (and no zonal one).
pub async fn is_regional(c: &Clients, stack: &str) -> Result<bool, Error> {
    let gateways = read::stack_gateways(c, stack).await?;
    let mut azs = gateways
        .iter()
        .filter(|g| {
            g.state()
                .is_some_and(|s| matches!(s.as_str(), "pending" | "available"))
        })
        .map(|g| tag_value(g.tags(), AZ_TAG).unwrap_or_default());
    Ok(azs.clone().any(|az| az == REGIONAL) && azs.all(|az| az == REGIONAL))
}

/// Whether an internet gateway is attached to `vpc` (a regional NAT gateway needs one).
pub async fn has_internet_gateway(c: &Clients, vpc: &str) -> Result<bool, Error> {
    let r = c
        .ec2
        .describe_internet_gateways()
        .filters(crate::aws::names::filter("attachment.vpc-id", &[vpc]))
        .send()
        .await
        .map_err(err("DescribeInternetGateways", vpc))?;
    Ok(r.internet_gateways().iter().any(|g| {
        g.attachments().iter().any(|a| {
            // AWS answers `available` for an attached internet gateway.
            a.vpc_id() == Some(vpc)
                && a.state()
                    .is_none_or(|s| matches!(s.as_str(), "available" | "attached"))
        })
    }))
}

/// Waits until the gateways `ids` are available, reporting their states.
async fn wait_available(c: &Clients, ids: &[String], progress: Progress<'_>) -> Result<(), Error> {
    let what = ids.join(", ");
    wait::until(
        "NAT gateways to be available",
        &what,
        GATEWAY_WAIT,
        progress,
        || async {
            let mut pending = Vec::new();
            for g in read::nat_gateways_by_id(c, ids).await? {
                let id = g.nat_gateway_id().unwrap_or_default();
                match g.state().map(|s| s.as_str()).unwrap_or("unknown") {
                    "available" => {}
                    "pending" => pending.push(format!("{id} pending")),
                    other => {
                        return Err(Error::Failed {
                            what: "NAT gateway",
                            target: id.to_string(),
                            reason: format!(
                                "state {other}: {}{}",
                                g.failure_code()
                                    .map(|c| format!("{c}: "))
                                    .unwrap_or_default(),
                                g.failure_message().unwrap_or("no reason given")
                            ),
                        });
                    }
                }
            }
            Ok(if pending.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Waiting(pending.join(", "))
            })
        },
    )
    .await?;
    progress(&format!("NAT gateway(s) {what} available"));
    Ok(())
}

/// Carries out `actions` in order.
pub async fn apply(
    c: &Clients,
    spec: &Spec,
    o: &Observed,
    actions: &[Action],
    progress: Progress<'_>,
) -> Result<(), Error> {
    use aws_sdk_ec2::types::{DomainType, ResourceType};
    let stack = spec.stack.as_str();
    let names = Names(stack);
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
                    .tag_specifications(ec2_tags(
                        ResourceType::ElasticIp,
                        stack,
                        &names.in_az(az),
                        &[(AZ_TAG, az)],
                    ))
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
                // AWS's idempotency: a retried call (the SDK retries timeouts) answers
                // the gateway the first attempt created. The address is new for each
                // gateway of the AZ, so the token is too.
                let r = c
                    .ec2
                    .create_nat_gateway()
                    .subnet_id(subnet)
                    .allocation_id(&alloc)
                    .client_token(format!("natd-{alloc}"))
                    .tag_specifications(ec2_tags(
                        ResourceType::Natgateway,
                        stack,
                        &names.in_az(az),
                        &[(AZ_TAG, az)],
                    ))
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
            Action::CreateRegionalNatGateway { vpc } => {
                // A token per run: the SDK's retries of this call answer the gateway the
                // first attempt made; a later run (after a teardown) makes a new one.
                let nonce = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default();
                let r = c
                    .ec2
                    .create_nat_gateway()
                    .availability_mode(aws_sdk_ec2::types::AvailabilityMode::Regional)
                    .vpc_id(vpc)
                    .client_token(format!("natd-{stack}-{nonce}"))
                    .tag_specifications(ec2_tags(
                        ResourceType::Natgateway,
                        stack,
                        &names.in_az(REGIONAL),
                        &[(AZ_TAG, REGIONAL)],
                    ))
                    .send()
                    .await
                    .map_err(err("CreateNatGateway", vpc))?;
                let id = r
                    .nat_gateway()
                    .and_then(|g| g.nat_gateway_id())
                    .unwrap_or_default()
                    .to_string();
                progress(&format!("created regional NAT gateway {id} for {vpc}"));
                gws.insert(REGIONAL.to_string(), id);
            }
            Action::WaitForGateways { azs } => {
                let ids: Vec<String> = azs.iter().filter_map(|az| gws.get(az).cloned()).collect();
                wait_available(c, &ids, progress).await?;
            }
            Action::CreateAzTable { az, from } => {
                let r = c
                    .ec2
                    .create_route_table()
                    .vpc_id(&spec.vpc)
                    .tag_specifications(ec2_tags(
                        ResourceType::RouteTable,
                        stack,
                        &names.in_az(az),
                        &[(AZ_TAG, az), (SPLIT_TAG, from), (ROUTES_TAG, stack)],
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
                read::untag(c, route_table, EGRESS_TAG).await?;
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
                    .tags(ec2_tag(ROUTES_TAG, stack))
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
                    Some((_, assoc)) => {
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
        }
    }
    Ok(())
}

/// A NAT gateway of the stack that is not deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayState {
    /// `nat-...`
    pub id: String,
    /// Its AZ.
    pub az: String,
    /// `pending`, `available`, `deleting`, `failed`.
    pub state: String,
}

/// A split table of the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitState {
    /// `rtb-...`
    pub id: String,
    /// The table its subnets came from.
    pub from: String,
    /// That table is the VPC's main table (or gone): subnets go back by losing their
    /// association.
    pub from_is_main: bool,
    /// Its subnets: (subnet, association id).
    pub subnets: Vec<(String, String)>,
}

/// A table whose default route the stack manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedTable {
    /// `rtb-...`
    pub id: String,
    /// Its default route goes to one of the stack's gateways.
    pub to_gateway: bool,
    /// Its default route's target.
    pub target: Option<String>,
    /// It is one of the stack's split tables.
    pub split: bool,
}

/// What exists of the part, for its removal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    /// Gateways not deleted.
    pub gateways: Vec<GatewayState>,
    /// The gateways' addresses.
    pub addresses: Vec<AddressState>,
    /// The AZ each address is for (`natd:az`), by allocation id.
    pub address_azs: BTreeMap<String, String>,
    /// Split tables.
    pub splits: Vec<SplitState>,
    /// Tables tagged `natd:routes=STACK`.
    pub managed: Vec<ManagedTable>,
}

/// One removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Removal {
    /// Put a subnet of a split table back on the table it came from.
    MoveSubnetBack {
        /// The subnet.
        subnet: String,
        /// Its association with the split table.
        association_id: String,
        /// The table it goes back to.
        to: String,
        /// That is the main table: the association is dropped instead.
        to_main: bool,
    },
    /// Delete a split table.
    DeleteRouteTable {
        /// `rtb-...`
        id: String,
    },
    /// Delete a default route to one of the stack's gateways.
    DeleteRoute {
        /// The table.
        route_table: String,
    },
    /// Remove `natd:routes` from a table.
    UntagRoutes {
        /// The table.
        route_table: String,
    },
    /// Delete a NAT gateway.
    DeleteNatGateway {
        /// `nat-...`
        id: String,
        /// Its AZ.
        az: String,
    },
    /// Wait until the gateways are deleted (their addresses are released only then).
    WaitDeleted {
        /// The gateways.
        ids: Vec<String>,
    },
    /// Release a gateway's Elastic IP.
    ReleaseAddress {
        /// The address.
        address: AddressState,
    },
}

/// Reads what exists of the stack's part.
pub async fn read_existing(c: &Clients, stack: &str) -> Result<Existing, Error> {
    let mut e = existing_from(
        stack,
        &read::stack_gateways(c, stack).await?,
        &read::stack_addresses(c, stack).await?,
        &read::route_tables(c, vec![tag_filter(ROUTES_TAG, stack)], stack).await?,
    );
    let mut splits = read::route_tables(
        c,
        vec![
            crate::aws::names::stack_filter(stack),
            crate::aws::names::filter("tag-key", &[SPLIT_TAG]),
        ],
        stack,
    )
    .await?;
    splits.retain(|t| of_stack(t.tags(), stack));
    for t in &splits {
        let from = tag_value(t.tags(), SPLIT_TAG)
            .unwrap_or_default()
            .to_string();
        let origin = read::route_tables(
            c,
            vec![crate::aws::names::filter("route-table-id", &[&from])],
            &from,
        )
        .await?;
        // Back to the main table (or the table is gone): the association is dropped.
        let from_is_main = origin.is_empty() || Associations::from_tables(&origin).main.is_some();
        e.splits.push(SplitState {
            id: t.route_table_id().unwrap_or_default().to_string(),
            from,
            from_is_main,
            subnets: t
                .associations()
                .iter()
                .filter_map(|a| {
                    Some((
                        a.subnet_id()?.to_string(),
                        a.route_table_association_id()?.to_string(),
                    ))
                })
                .collect(),
        });
    }
    Ok(e)
}

/// The stack's gateways (not deleted), its addresses with their AZs, and the tables of
/// `tables` tagged `natd:routes=STACK`, from what EC2 answered. Split tables are only
/// marked as such here; [`read_existing`] reads what teardown needs of them.
fn existing_from(
    stack: &str,
    gateways: &[aws_sdk_ec2::types::NatGateway],
    addresses: &[aws_sdk_ec2::types::Address],
    tables: &[aws_sdk_ec2::types::RouteTable],
) -> Existing {
    let mut e = Existing::default();
    let ids: BTreeSet<&str> = gateways.iter().filter_map(|g| g.nat_gateway_id()).collect();
    for g in gateways {
        let state = g
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        if state == "deleted" {
            continue;
        }
        e.gateways.push(GatewayState {
            id: g.nat_gateway_id().unwrap_or_default().to_string(),
            az: tag_value(g.tags(), AZ_TAG).unwrap_or_default().to_string(),
            state,
        });
    }
    for a in addresses {
        if let Some(az) = tag_value(a.tags(), AZ_TAG) {
            let state = AddressState::from(a);
            e.address_azs
                .insert(state.allocation_id.clone(), az.to_string());
            e.addresses.push(state);
        }
    }
    for t in tables {
        if tag_value(t.tags(), ROUTES_TAG) != Some(stack) {
            continue;
        }
        e.managed.push(ManagedTable {
            id: t.route_table_id().unwrap_or_default().to_string(),
            to_gateway: natd::aws::default_route(t)
                .and_then(|r| r.nat_gateway_id())
                .is_some_and(|g| ids.contains(g)),
            target: read::default_target(t).map(str::to_string),
            split: of_stack(t.tags(), stack) && tag_value(t.tags(), SPLIT_TAG).is_some(),
        });
    }
    e
}

/// The removals that take `e` away, in dependency order: split tables (their subnets
/// back to where they came from), the default routes to the stack's gateways and the
/// `natd:routes` tags, the gateways (waited until deleted), their addresses. `taken`,
/// in a switch to another egress, names the tables that egress holds: they stay (split
/// tables included) and only lose `natd:routes`.
pub fn plan_remove(e: &Existing, taken: Option<&BTreeSet<String>>) -> Vec<Removal> {
    let is_taken = |id: &str| taken.is_some_and(|k| k.contains(id));
    let mut out = Vec::new();
    for s in e.splits.iter().filter(|s| !is_taken(&s.id)) {
        for (subnet, assoc) in &s.subnets {
            out.push(Removal::MoveSubnetBack {
                subnet: subnet.clone(),
                association_id: assoc.clone(),
                to: s.from.clone(),
                to_main: s.from_is_main,
            });
        }
        out.push(Removal::DeleteRouteTable { id: s.id.clone() });
    }
    for t in &e.managed {
        if t.split && !is_taken(&t.id) {
            continue; // deleted with its routes above
        }
        if t.to_gateway && !is_taken(&t.id) {
            out.push(Removal::DeleteRoute {
                route_table: t.id.clone(),
            });
        }
        out.push(Removal::UntagRoutes {
            route_table: t.id.clone(),
        });
    }
    for g in &e.gateways {
        if g.state != "deleting" {
            out.push(Removal::DeleteNatGateway {
                id: g.id.clone(),
                az: g.az.clone(),
            });
        }
    }
    if !e.gateways.is_empty() {
        out.push(Removal::WaitDeleted {
            ids: e.gateways.iter().map(|g| g.id.clone()).collect(),
        });
    }
    for a in &e.addresses {
        out.push(Removal::ReleaseAddress { address: a.clone() });
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
            Removal::MoveSubnetBack {
                subnet,
                association_id,
                to,
                to_main,
            } => {
                if *to_main {
                    let r = c
                        .ec2
                        .disassociate_route_table()
                        .association_id(association_id)
                        .send()
                        .await;
                    found(r, "DisassociateRouteTable", subnet)?;
                } else {
                    c.ec2
                        .replace_route_table_association()
                        .association_id(association_id)
                        .route_table_id(to)
                        .send()
                        .await
                        .map_err(err("ReplaceRouteTableAssociation", subnet))?;
                }
            }
            Removal::DeleteRouteTable { id } => {
                let r = c.ec2.delete_route_table().route_table_id(id).send().await;
                found(r, "DeleteRouteTable", id)?;
            }
            Removal::DeleteRoute { route_table } => {
                read::delete_default_route(c, route_table).await?;
            }
            Removal::UntagRoutes { route_table } => {
                read::untag(c, route_table, ROUTES_TAG).await?;
            }
            Removal::DeleteNatGateway { id, .. } => {
                let r = c.ec2.delete_nat_gateway().nat_gateway_id(id).send().await;
                found(r, "DeleteNatGateway", id)?;
            }
            Removal::WaitDeleted { ids } => {
                let what = ids.join(", ");
                wait::until(
                    "NAT gateways to be deleted",
                    &what,
                    DELETE_WAIT,
                    progress,
                    || async {
                        let left: Vec<String> = read::nat_gateways_by_id(c, ids)
                            .await?
                            .iter()
                            .filter(|g| g.state().is_some_and(|s| s.as_str() != "deleted"))
                            .filter_map(|g| g.nat_gateway_id().map(str::to_string))
                            .collect();
                        Ok(if left.is_empty() {
                            Poll::Ready(())
                        } else {
                            Poll::Waiting(format!("{} deleting", left.join(", ")))
                        })
                    },
                )
                .await?;
            }
            Removal::ReleaseAddress { address } => read::release_address(c, address).await?,
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
            mode: Mode::Zonal,
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
            .insert("priv-a".into(), ("rtb-split-a".into(), "x".into()));
        o.associations
            .insert("priv-b".into(), ("rtb-split-b".into(), "y".into()));
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
    fn from_dev_releases_natd_tables_before_routing() {
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

    #[test]
    fn removal_puts_split_subnets_back_before_deleting_and_keeps_tables_on_handover() {
        let e = Existing {
            gateways: vec![
                GatewayState {
                    id: "nat-a".into(),
                    az: "a".into(),
                    state: "available".into(),
                },
                GatewayState {
                    id: "nat-b".into(),
                    az: "b".into(),
                    state: "deleting".into(),
                },
            ],
            addresses: vec![AddressState {
                allocation_id: "eipalloc-a".into(),
                association_id: Some("eipassoc-a".into()),
                public_ip: "198.51.100.1".into(),
            }],
            splits: vec![SplitState {
                id: "rtb-split-a".into(),
                from: "rtb-main".into(),
                from_is_main: true,
                subnets: vec![("priv-a".into(), "rtbassoc-1".into())],
            }],
            managed: vec![
                ManagedTable {
                    id: "rtb-split-a".into(),
                    to_gateway: true,
                    target: Some("nat-a".into()),
                    split: true,
                },
                ManagedTable {
                    id: "rtb-x".into(),
                    to_gateway: true,
                    target: Some("nat-a".into()),
                    split: false,
                },
            ],
            address_azs: [("eipalloc-a".to_string(), "a".to_string())].into(),
        };
        let r = plan_remove(&e, None);
        let pos = |x: &Removal| r.iter().position(|y| y == x).expect("present");
        let back = pos(&Removal::MoveSubnetBack {
            subnet: "priv-a".into(),
            association_id: "rtbassoc-1".into(),
            to: "rtb-main".into(),
            to_main: true,
        });
        assert!(
            back < pos(&Removal::DeleteRouteTable {
                id: "rtb-split-a".into()
            })
        );
        assert!(
            pos(&Removal::DeleteRoute {
                route_table: "rtb-x".into()
            }) < pos(&Removal::DeleteNatGateway {
                id: "nat-a".into(),
                az: "a".into()
            })
        );
        assert!(
            !r.iter()
                .any(|x| matches!(x, Removal::DeleteNatGateway { id, .. } if id == "nat-b")),
            "a gateway already deleting is only waited for"
        );
        let wait = pos(&Removal::WaitDeleted {
            ids: vec!["nat-a".into(), "nat-b".into()],
        });
        assert!(wait < r.len() - 1 && matches!(r.last(), Some(Removal::ReleaseAddress { .. })));
        let taken = BTreeSet::from(["rtb-split-a".to_string(), "rtb-x".to_string()]);
        let h = plan_remove(&e, Some(&taken));
        assert!(!h.iter().any(|x| matches!(
            x,
            Removal::MoveSubnetBack { .. }
                | Removal::DeleteRouteTable { .. }
                | Removal::DeleteRoute { .. }
        )));
        assert!(h.contains(&Removal::UntagRoutes {
            route_table: "rtb-split-a".into()
        }));
        assert_eq!(plan_remove(&Existing::default(), None), vec![]);
    }

    fn regional_spec() -> Spec {
        let mut s = spec();
        let private = s.azs.values().flat_map(|z| z.private.clone()).map(|mut p| {
            p.shared = false;
            p
        });
        let private = private.collect();
        s.mode = Mode::Regional;
        s.azs = [(
            REGIONAL.to_string(),
            AzSpec {
                public_subnet: String::new(),
                private,
            },
        )]
        .into();
        s
    }

    #[test]
    fn regional_is_one_gateway_no_address_no_split() {
        let p = plan(&regional_spec(), &Observed::default()).expect("plan");
        assert_eq!(
            p.iter()
                .filter(|a| matches!(a, Action::CreateRegionalNatGateway { .. }))
                .count(),
            1
        );
        assert!(!p.iter().any(|a| matches!(
            a,
            Action::AllocateAddress { .. }
                | Action::CreateNatGateway { .. }
                | Action::CreateAzTable { .. }
                | Action::MoveSubnet { .. }
        )));
        // The table shared by two AZs is routed once, to the one gateway.
        let routes: Vec<_> = p
            .iter()
            .filter_map(|a| match a {
                Action::SetDefaultRoute { route_table, az } => {
                    Some((route_table.clone(), az.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            routes,
            vec![
                (TableRef::Existing("rtb-a".into()), REGIONAL.to_string()),
                (TableRef::Existing("rtb-main".into()), REGIONAL.to_string()),
            ]
        );
        let wait = p
            .iter()
            .position(|a| matches!(a, Action::WaitForGateways { .. }))
            .expect("wait");
        let first_route = p
            .iter()
            .position(|a| matches!(a, Action::SetDefaultRoute { .. }))
            .expect("route");
        assert!(wait < first_route);
    }

    fn zonal_existing() -> Existing {
        Existing {
            gateways: vec![
                GatewayState {
                    id: "nat-a".into(),
                    az: "a".into(),
                    state: "available".into(),
                },
                GatewayState {
                    id: "nat-b".into(),
                    az: "b".into(),
                    state: "available".into(),
                },
            ],
            addresses: vec![AddressState {
                allocation_id: "eipalloc-a".into(),
                association_id: Some("eipassoc-a".into()),
                public_ip: "198.51.100.1".into(),
            }],
            address_azs: [("eipalloc-a".to_string(), "a".to_string())].into(),
            splits: vec![],
            managed: vec![ManagedTable {
                id: "rtb-a".into(),
                to_gateway: true,
                target: Some("nat-a".into()),
                split: false,
            }],
        }
    }

    #[test]
    fn a_switch_retires_the_other_modes_gateways_and_addresses_only() {
        // Zonal -> regional: both zonal gateways and their address go; rtb-a is routed
        // by the regional plan, so its route is not deleted.
        let (r, kept) = retiring(&zonal_existing(), &regional_spec(), &BTreeMap::new());
        assert!(kept.is_empty());
        assert_eq!(
            r.gateways.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
            ["nat-a", "nat-b"]
        );
        assert_eq!(r.addresses.len(), 1);
        assert!(r.managed.is_empty(), "{:?}", r.managed);
        let removals = plan_remove(&r, None);
        assert!(
            !removals
                .iter()
                .any(|x| matches!(x, Removal::DeleteRoute { .. }))
        );
        assert!(matches!(
            removals.last(),
            Some(Removal::ReleaseAddress { .. })
        ));
        // The zonal spec keeps its own gateways.
        let (r, _) = retiring(&zonal_existing(), &spec(), &BTreeMap::new());
        assert_eq!(r, Existing::default());
        // Regional -> zonal: the regional gateway goes, and the shared table it routed
        // (split for the zonal gateways, so routed by no one) loses its route.
        let e = Existing {
            gateways: vec![GatewayState {
                id: "nat-r".into(),
                az: REGIONAL.into(),
                state: "available".into(),
            }],
            managed: vec![
                ManagedTable {
                    id: "rtb-main".into(),
                    to_gateway: true,
                    target: Some("nat-r".into()),
                    split: false,
                },
                ManagedTable {
                    id: "rtb-a".into(),
                    to_gateway: true,
                    target: Some("nat-a".into()),
                    split: false,
                },
            ],
            ..Existing::default()
        };
        let (r, _) = retiring(&e, &spec(), &BTreeMap::new());
        assert_eq!(r.gateways.len(), 1);
        assert_eq!(
            r.managed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            ["rtb-main"]
        );
        assert!(plan_remove(&r, None).contains(&Removal::DeleteRoute {
            route_table: "rtb-main".into()
        }));
    }

    #[test]
    fn a_gateway_a_foreign_table_routes_to_is_kept_with_its_address() {
        let routed = BTreeMap::from([("nat-a".to_string(), "rtb-other".to_string())]);
        let (r, kept) = retiring(&zonal_existing(), &regional_spec(), &routed);
        assert_eq!(
            r.gateways.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
            ["nat-b"]
        );
        assert!(r.addresses.is_empty(), "nat-a keeps its address");
        assert_eq!(kept.len(), 1);
        assert!(kept[0].contains("nat-a") && kept[0].contains("rtb-other"));
    }
}
