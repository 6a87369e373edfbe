//! `natctl status --name STACK`: the stack's egress as it is, and whether it works.
//! [`read`] gathers [`Facts`] (the NAT instances of its group, its NAT gateways, the
//! default route of each table it manages, its Lambda wiring); [`assess`] decides,
//! without I/O, which routes work and whether egress is healthy (exit status 3 when
//! not).

use crate::aws::names::{AZ_TAG, FUNCTION_TAG, Names, ROUTES_TAG, STACK_TAG, tag_value};
use crate::aws::read;
use crate::aws::{Clients, Error, found};
use natd_contract::health::{Beats, HealthTag, Lag};
use serde::Serialize;
use std::collections::BTreeMap;

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
    /// Its primary ENI, while it runs.
    pub eni: Option<String>,
    /// What natd on it last published (its `natd:health` tag), if anything.
    pub natd: Option<NatdReport>,
}

/// natd's own account of its instance, from the `natd:health` tag natd writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatdReport {
    /// Data plane: `ok`, `failing`, `starting`.
    pub data: String,
    /// Control plane (natd reaching AWS): `ok`, `trouble`.
    pub control: String,
    /// Failed data-plane passes in a row, of how many before Unhealthy (`2/3`).
    pub failing: Option<String>,
    /// Route tables natd holds.
    pub routes: Option<u32>,
    /// When natd wrote it (RFC 3339).
    pub reported_at: String,
    /// Seconds since then.
    pub age_secs: u64,
    /// Older than twice natd's refresh period: natd is stopped, or cannot reach EC2.
    pub stale: bool,
    /// The last time natd could not reach AWS: how long, and when it ended.
    pub api_outage: Option<ApiOutage>,
    /// In a hot standby pair: this instance's part in it.
    pub pair: Option<PairReport>,
}

/// One instance of a hot standby pair, as its natd reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PairReport {
    /// `holder` (routes and egress address) or `standby`.
    pub role: String,
    /// The other instance.
    pub peer: Option<String>,
    /// Heartbeats from the peer: `ok`, `lost`, `never` (heard).
    pub heartbeats: String,
    /// Connections of the peer this instance holds a copy of (conntrackd's external
    /// cache), when it reported them.
    pub synced_entries: Option<u64>,
    /// Connections this instance forwards that its conntrackd tracks (its internal
    /// cache), when it reported them.
    pub held_entries: Option<u64>,
    /// The standby's lag: connections the holder tracks that the standby holds no
    /// copy of. As the standby's natd measured it against the holder's heartbeats
    /// (`lag=`), else from the two members' reported counts (rounded to two digits).
    pub behind_entries: Option<u64>,
    /// How long the standby's copy has been behind (0 in step), as its natd measured
    /// it (in steps of 15 s).
    pub behind_secs: Option<u64>,
    /// The last takeover this instance made: `<ms>ms@<RFC 3339>`.
    pub last_takeover: Option<String>,
}

/// One period natd could not reach AWS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiOutage {
    /// How long it lasted, seconds.
    pub secs: u64,
    /// When it ended (RFC 3339).
    pub ended: String,
}

/// Reads a `natd:health` tag value (`data=ok control=ok routes=1 at=...`, the
/// contract's [`HealthTag`]) as of `now`. `None` when it is not one.
pub fn parse_natd_health(value: &str, now: std::time::SystemTime) -> Option<NatdReport> {
    let tag = HealthTag::parse(value)?;
    let r = &tag.report;
    let time = |t| humantime::format_rfc3339_seconds(t).to_string();
    Some(NatdReport {
        data: r.data.word().to_string(),
        control: r.control.word().to_string(),
        failing: r.failing.map(|f| format!("{}/{}", f.count, f.limit)),
        routes: r.routes,
        reported_at: time(tag.at),
        age_secs: tag.age(now).as_secs(),
        stale: tag.stale(now),
        api_outage: r.api_outage.map(|o| ApiOutage {
            secs: o.secs,
            ended: time(o.ended),
        }),
        pair: r.pair.as_ref().map(|p| {
            let lag = p.lag.map(|l| match l {
                Lag::InStep => (0, 0),
                Lag::Behind { entries, secs } => (entries, secs),
            });
            PairReport {
                role: p.role.word().to_string(),
                peer: p.peer.as_ref().map(|x| x.instance.clone()),
                heartbeats: p
                    .peer
                    .as_ref()
                    .map_or(Beats::Never, |x| x.beats)
                    .word()
                    .to_string(),
                synced_entries: p.synced,
                held_entries: p.held,
                behind_entries: lag.map(|l| l.0),
                behind_secs: lag.map(|l| l.1),
                last_takeover: p.takeover.map(|t| t.words()),
            }
        }),
    })
}

impl NatdReport {
    /// Its part in a hot standby pair, when the report is recent enough to go by.
    pub fn current_pair(&self) -> Option<&PairReport> {
        self.pair.as_ref().filter(|_| !self.stale)
    }
}

/// For a hot standby pair: how far the standby's copy of the holder's connections is
/// behind, from the two members' reports (set on the standby's report).
pub fn fill_pair_lag(instances: &mut [Instance]) {
    let held = instances
        .iter()
        .filter_map(|i| i.natd.as_ref()?.current_pair())
        .find(|p| p.role == "holder")
        .and_then(|p| p.held_entries);
    for i in instances.iter_mut() {
        if let Some(p) = i
            .natd
            .as_mut()
            .filter(|n| !n.stale)
            .and_then(|n| n.pair.as_mut())
            // A natd that measures its lag says it (`lag=`); else from the two counts.
            .filter(|p| p.role == "standby" && p.behind_secs.is_none())
        {
            p.behind_entries = held.zip(p.synced_entries).map(|(h, s)| h.saturating_sub(s));
        }
    }
}

/// For a hot standby pair, what keeps it from failing over in a second, if anything:
/// no standby reporting, a standby that does not hear the holder, or no holder.
pub fn pair_warning(instances: &[Instance]) -> Option<String> {
    let reports: Vec<(&Instance, &PairReport)> = instances
        .iter()
        .filter_map(|i| Some((i, i.natd.as_ref()?.current_pair()?)))
        .collect();
    if reports.is_empty() {
        return None;
    }
    let holders = reports.iter().filter(|(_, p)| p.role == "holder").count();
    let standby = reports.iter().find(|(_, p)| p.role == "standby");
    match (holders, standby) {
        (0, _) => Some("no instance reports holding the egress address".into()),
        (_, None) => Some(
            "no standby reports: a failover waits for a replacement to boot (as with one instance)"
                .into(),
        ),
        (_, Some((i, p))) if p.heartbeats != "ok" => Some(format!(
            "the standby {} does not hear the holder (heartbeats {}): check the security group admits the pair's UDP ports from itself",
            i.id, p.heartbeats
        )),
        _ => None,
    }
}

impl Instance {
    /// Whether natd on it says, recently, that it does not forward.
    pub fn natd_says_broken(&self) -> bool {
        self.natd
            .as_ref()
            .is_some_and(|n| !n.stale && n.data == "failing")
    }
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
    /// Its public addresses, comma-separated (a regional gateway has one per AZ).
    pub public_ip: Option<String>,
}

/// One route table the stack manages, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFacts {
    /// `rtb-...`
    pub id: String,
    /// AZs of the subnets associated with it.
    pub azs: Vec<String>,
    /// Target of 0.0.0.0/0, if any.
    pub target: Option<String>,
    /// EC2's route state (`active`, `blackhole`).
    pub state: Option<String>,
}

/// One route table the stack manages, assessed.
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

/// What [`read`] found of a stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Stack name.
    pub stack: String,
    /// NAT instances.
    pub instances: Vec<Instance>,
    /// NAT gateways.
    pub gateways: Vec<Gateway>,
    /// Managed route tables.
    pub tables: Vec<TableFacts>,
    /// The Lambda wiring.
    pub lambda: Option<Wiring>,
    /// natd's latest published values (a NAT-instance stack).
    pub metrics: Vec<MetricValue>,
    /// The stack's alarms and their states.
    pub alarms: Vec<AlarmSummary>,
    /// Its IPv6 egress, when `setup --ipv6` built one.
    pub ipv6: Option<Ipv6Egress>,
}

/// A stack's IPv6 egress (no NAT): its egress-only gateway and the `::/0` route of each
/// table setup routed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ipv6Egress {
    /// The stack's egress-only internet gateway (`None`: gone, or the VPC's own).
    pub gateway: Option<String>,
    /// Each table whose `::/0` the stack routes, and where `::/0` goes now.
    pub routes: Vec<(String, Option<String>)>,
    /// Every route goes to an egress-only gateway.
    pub ok: bool,
}

/// A metric's latest value in CloudWatch (the stack's dimension, one-minute points).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricValue {
    /// The metric (natd_contract::metrics).
    pub metric: String,
    /// Its latest minute's value (Sum of a count, Maximum of a level, Minimum of a 0/1
    /// flag).
    pub value: f64,
    /// That minute, RFC 3339.
    pub at: String,
}

impl Eq for MetricValue {}

/// One of the stack's alarms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlarmSummary {
    /// Its name.
    pub name: String,
    /// OK, ALARM or INSUFFICIENT_DATA.
    pub state: String,
}

/// The metrics `status` shows, with the statistic of one minute.
pub const SHOWN: [(&str, &str); 9] = [
    (natd_contract::metrics::ACTIVE_CONNECTIONS, "Maximum"),
    (natd_contract::metrics::BYTES_OUT_TO_DESTINATION, "Sum"),
    (natd_contract::metrics::BYTES_IN_FROM_DESTINATION, "Sum"),
    (natd_contract::metrics::CONNTRACK_USED_PERCENT, "Maximum"),
    (natd_contract::metrics::PORTS_BUSIEST_DESTINATION, "Maximum"),
    (natd_contract::metrics::ERROR_PORT_ALLOCATION, "Sum"),
    (natd_contract::metrics::ALLOWANCE_EXCEEDED, "Sum"),
    (natd_contract::metrics::DATA_PLANE_OK, "Minimum"),
    (natd_contract::metrics::STANDBY_READY, "Minimum"),
];

/// natd's latest values for `stack`: each shown metric's newest minute within the last
/// 15 minutes (a quiet counter with no point there is left out: it counted nothing).
pub async fn latest_metrics(c: &Clients, stack: &str) -> Result<Vec<MetricValue>, Error> {
    use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
    let now = std::time::SystemTime::now();
    let mut req =
        c.cw.get_metric_data()
            .start_time(aws_sdk_cloudwatch::primitives::DateTime::from(
                now - std::time::Duration::from_secs(15 * 60),
            ))
            .end_time(aws_sdk_cloudwatch::primitives::DateTime::from(
                now + std::time::Duration::from_secs(60),
            ))
            .scan_by(aws_sdk_cloudwatch::types::ScanBy::TimestampDescending);
    for (i, (metric, stat)) in SHOWN.iter().enumerate() {
        req = req.metric_data_queries(
            MetricDataQuery::builder()
                .id(format!("m{i}"))
                .metric_stat(
                    MetricStat::builder()
                        .metric(
                            Metric::builder()
                                .namespace(natd_contract::metrics::NAMESPACE)
                                .metric_name(*metric)
                                .dimensions(
                                    Dimension::builder()
                                        .name(natd_contract::metrics::STACK_DIMENSION)
                                        .value(stack)
                                        .build(),
                                )
                                .build(),
                        )
                        .period(natd_contract::metrics::PERIOD_SECS)
                        .stat(*stat)
                        .build(),
                )
                .return_data(true)
                .build(),
        );
    }
    let r = req
        .send()
        .await
        .map_err(crate::aws::err("GetMetricData", stack))?;
    let mut out = Vec::new();
    for (i, (metric, _)) in SHOWN.iter().enumerate() {
        let id = format!("m{i}");
        let Some(res) = r.metric_data_results().iter().find(|x| x.id() == Some(&id)) else {
            continue;
        };
        let newest = res
            .timestamps()
            .iter()
            .zip(res.values())
            .max_by_key(|(t, _)| t.secs());
        if let Some((t, v)) = newest {
            out.push(MetricValue {
                metric: metric.to_string(),
                value: *v,
                at: t
                    .fmt(aws_smithy_types::date_time::Format::DateTime)
                    .unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

impl Facts {
    /// Whether anything of the stack exists.
    pub fn exists(&self) -> bool {
        !self.instances.is_empty()
            || !self.gateways.is_empty()
            || !self.tables.is_empty()
            || self.lambda.is_some()
            || self.ipv6.is_some()
    }
}

/// The stack's egress, assessed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Stack name.
    pub stack: String,
    /// NAT instances.
    pub instances: Vec<Instance>,
    /// NAT gateways.
    pub gateways: Vec<Gateway>,
    /// Managed route tables.
    pub route_tables: Vec<RouteTable>,
    /// The Lambda wiring, when the stack has one.
    pub lambda: Option<Wiring>,
    /// natd's latest published values.
    pub metrics: Vec<MetricValue>,
    /// The stack's alarms.
    pub alarms: Vec<AlarmSummary>,
    /// Its IPv6 egress, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Egress>,
    /// Egress works for every table (and there is at least one), IPv6 included.
    pub healthy: bool,
}

/// Whether a table's default route works, and whether it crosses AZs: it must be
/// active and point at a running instance of the stack (its ENI or its id) or at an
/// available gateway of the stack.
pub fn route_works(t: &TableFacts, instances: &[Instance], gateways: &[Gateway]) -> (bool, bool) {
    let gateway = t
        .target
        .as_ref()
        .and_then(|x| gateways.iter().find(|g| &g.id == x));
    // A regional gateway serves every AZ in that AZ.
    let cross_az = gateway.is_some_and(|g| {
        g.az != crate::parts::nat_gateways::REGIONAL && t.azs.iter().any(|az| *az != g.az)
    });
    let via_instance = t.target.as_ref().is_some_and(|x| {
        instances
            .iter()
            .filter(|i| !i.natd_says_broken())
            .any(|i| i.eni.as_ref() == Some(x) || (i.eni.is_some() && &i.id == x))
    });
    let ok = t.state.as_deref() == Some("active")
        && (via_instance || gateway.is_some_and(|g| g.state == "available"));
    (ok, cross_az)
}

/// Decides the status from the facts: egress is healthy when the stack manages at least
/// one table and every one of them works ([`route_works`]).
pub fn assess(f: Facts) -> Status {
    let mut route_tables: Vec<RouteTable> = f
        .tables
        .iter()
        .map(|t| {
            let (ok, cross_az) = route_works(t, &f.instances, &f.gateways);
            RouteTable {
                id: t.id.clone(),
                azs: t.azs.clone(),
                cross_az,
                target: t.target.clone(),
                state: t.state.clone(),
                ok,
            }
        })
        .collect();
    route_tables.sort_by(|a, b| a.id.cmp(&b.id));
    let healthy = !route_tables.is_empty()
        && route_tables.iter().all(|t| t.ok)
        && f.ipv6.as_ref().is_none_or(|v| v.ok);
    Status {
        stack: f.stack,
        instances: f.instances,
        gateways: f.gateways,
        route_tables,
        lambda: f.lambda,
        metrics: f.metrics,
        alarms: f.alarms,
        ipv6: f.ipv6,
        healthy,
    }
}

/// Reads the stack's facts.
pub async fn read(c: &Clients, stack: &str) -> Result<Facts, Error> {
    let name = Names(stack).nat();
    let mut instances = Vec::new();
    // A hot standby pair has a second group.
    for group in [name.clone(), Names(stack).standby()] {
        let Some(g) = read::auto_scaling_group(c, &group).await? else {
            continue;
        };
        if !read::group_of_stack(&g, stack) {
            continue;
        }
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
                natd: None,
            });
        }
    }
    if !instances.is_empty() {
        let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
        let found = read::instances(
            c,
            vec![crate::aws::names::filter("instance-id", &ids)],
            &name,
        )
        .await?;
        for i in found {
            let eni = i
                .network_interfaces()
                .iter()
                .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
                .and_then(|n| n.network_interface_id());
            let running = i
                .state()
                .and_then(|s| s.name())
                .is_some_and(|n| n.as_str() == "running");
            if let Some(mine) = instances
                .iter_mut()
                .find(|m| Some(m.id.as_str()) == i.instance_id())
            {
                mine.eni = eni.filter(|_| running).map(str::to_string);
                mine.natd = tag_value(i.tags(), natd_contract::HEALTH_TAG)
                    .and_then(|v| parse_natd_health(v, std::time::SystemTime::now()));
            }
        }
    }
    fill_pair_lag(&mut instances);
    let gateways: Vec<Gateway> = read::stack_gateways(c, stack)
        .await?
        .iter()
        .filter(|g| g.state().is_some_and(|s| s.as_str() != "deleted"))
        .map(|g| Gateway {
            id: g.nat_gateway_id().unwrap_or_default().to_string(),
            az: tag_value(g.tags(), AZ_TAG).unwrap_or_default().to_string(),
            state: g
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            public_ip: Some(
                g.nat_gateway_addresses()
                    .iter()
                    .filter_map(|a| a.public_ip())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
            .filter(|s| !s.is_empty()),
        })
        .collect();
    // natd's tables (tagged, or named by its boot configuration when a template made
    // the stack), the tables natctl routes to the stack's gateways, and the tables a
    // template routes to them (it cannot tag them).
    let mut tables = read::egress_tables(c, stack).await?;
    let gateway_ids: Vec<&str> = gateways.iter().map(|g| g.id.as_str()).collect();
    let mut more = read::tables_tagged(c, ROUTES_TAG, stack).await?;
    if !gateway_ids.is_empty() {
        more.extend(
            read::route_tables(
                c,
                vec![crate::aws::names::filter(
                    "route.nat-gateway-id",
                    &gateway_ids,
                )],
                stack,
            )
            .await?,
        );
    }
    for t in more {
        if !tables
            .iter()
            .any(|x| x.route_table_id() == t.route_table_id())
        {
            tables.push(t);
        }
    }
    let subnet_ids: Vec<&str> = tables
        .iter()
        .flat_map(|t| t.associations())
        .filter_map(|a| a.subnet_id())
        .collect();
    let mut subnet_az = BTreeMap::new();
    if !subnet_ids.is_empty() {
        for s in read::subnets(
            c,
            vec![crate::aws::names::filter("subnet-id", &subnet_ids)],
            stack,
        )
        .await?
        {
            subnet_az.insert(
                s.subnet_id().unwrap_or_default().to_string(),
                s.availability_zone().unwrap_or_default().to_string(),
            );
        }
    }
    let tables = tables
        .iter()
        .map(|t| {
            let mut azs: Vec<String> = t
                .associations()
                .iter()
                .filter_map(|a| subnet_az.get(a.subnet_id()?).cloned())
                .collect();
            azs.sort();
            azs.dedup();
            TableFacts {
                id: t.route_table_id().unwrap_or_default().to_string(),
                azs,
                target: read::default_target(t).map(str::to_string),
                state: read::default_state(t).map(str::to_string),
            }
        })
        .collect();
    // natd's numbers and the alarms, where CloudWatch lets us read them (a caller
    // without cloudwatch:GetMetricData still sees the rest).
    let (metrics, alarms) = if instances.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        (
            latest_metrics(c, stack).await.unwrap_or_default(),
            crate::parts::alarms::read(c, stack)
                .await
                .map(|o| {
                    o.alarms
                        .into_iter()
                        .map(|a| AlarmSummary {
                            name: a.name,
                            state: a.state,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        )
    };
    Ok(Facts {
        stack: stack.to_string(),
        instances,
        gateways,
        tables,
        lambda: wiring(c, stack).await?,
        metrics,
        alarms,
        ipv6: ipv6_egress(c, stack).await?,
    })
}

/// The stack's IPv6 egress, as it is.
async fn ipv6_egress(c: &Clients, stack: &str) -> Result<Option<Ipv6Egress>, Error> {
    let e = crate::parts::ipv6::read_existing(c, stack).await?;
    if e.routes.is_empty() && e.gateway.is_none() {
        return Ok(None);
    }
    let tables: std::collections::BTreeSet<String> = e.routes.iter().cloned().collect();
    let routes: Vec<(String, Option<String>)> = crate::parts::ipv6::ipv6_routes(c, &tables)
        .await?
        .into_iter()
        .collect();
    let ok = routes
        .iter()
        .all(|(_, t)| t.as_deref().is_some_and(|t| t.starts_with("eigw-")));
    Ok(Some(Ipv6Egress {
        gateway: e.gateway,
        routes,
        ok,
    }))
}

/// Reads the stack's Lambda wiring: the function its execution role names.
async fn wiring(c: &Clients, stack: &str) -> Result<Option<Wiring>, Error> {
    let names = Names(stack);
    let Some((role_arn, tags)) = read::role(c, &names.lambda()).await? else {
        return Ok(None);
    };
    if tags.get(STACK_TAG).map(String::as_str) != Some(stack) {
        return Ok(None);
    }
    let Some(function) = tags.get(FUNCTION_TAG).cloned() else {
        return Ok(None);
    };
    let f = found(
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
    let lambda_sg = read::groups_named(c, None, &[&names.lambda()])
        .await?
        .iter()
        .find(|g| crate::aws::names::of_stack(g.tags(), stack))
        .and_then(|g| g.group_id())
        .map(str::to_string);
    let endpoints =
        read::vpc_endpoints(c, vec![crate::aws::names::stack_filter(stack)], stack).await?;
    let e = endpoints
        .iter()
        .find(|e| crate::aws::names::of_stack(e.tags(), stack));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(eni: Option<&str>) -> Instance {
        Instance {
            id: "i-1".into(),
            az: "a".into(),
            lifecycle: "InService".into(),
            health: "Healthy".into(),
            eni: eni.map(Into::into),
            natd: None,
        }
    }

    #[test]
    fn a_pair_without_a_working_standby_is_said() {
        let now = humantime::parse_rfc3339("2026-11-25T10:01:00Z").expect("time");
        let member = |id: &str, tag: &str| Instance {
            natd: parse_natd_health(
                &format!("data=ok control=ok {tag} at=2026-11-25T10:00:00Z"),
                now,
            ),
            ..instance(Some(id))
        };
        let holder = member("eni-1", "pair=holder peer=i-2 beat=ok");
        let standby = member("eni-2", "pair=standby peer=i-1 beat=ok");
        assert_eq!(pair_warning(&[holder.clone(), standby]), None);
        assert!(
            pair_warning(std::slice::from_ref(&holder))
                .expect("said")
                .contains("no standby")
        );
        let deaf = member("eni-2", "pair=standby peer=i-1 beat=lost");
        assert!(
            pair_warning(&[holder, deaf])
                .expect("said")
                .contains("does not hear")
        );
        assert_eq!(pair_warning(&[instance(Some("eni-1"))]), None, "not a pair");
    }

    #[test]
    fn the_standbys_lag_is_the_holders_connections_it_has_no_copy_of() {
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let member = |id: &str, tag: &str| Instance {
            natd: parse_natd_health(tag, std::time::SystemTime::now()),
            ..instance(Some(id))
        };
        let mut pair = vec![
            member(
                "eni-1",
                &format!(
                    "data=ok control=ok pair=holder peer=i-2 beat=ok held=1200 synced=0 at={at}"
                ),
            ),
            member(
                "eni-2",
                &format!(
                    "data=ok control=ok pair=standby peer=i-1 beat=ok held=0 synced=1100 at={at}"
                ),
            ),
        ];
        fill_pair_lag(&mut pair);
        let lag = |i: &Instance| {
            i.natd
                .as_ref()
                .and_then(|n| n.pair.as_ref())
                .and_then(|p| p.behind_entries)
        };
        assert_eq!((lag(&pair[0]), lag(&pair[1])), (None, Some(100)));
        // A standby ahead of a stale count is not behind; without the holder's count
        // nothing is said.
        pair[1] = member(
            "eni-2",
            &format!("data=ok control=ok pair=standby beat=ok synced=1300 at={at}"),
        );
        fill_pair_lag(&mut pair);
        assert_eq!(lag(&pair[1]), Some(0));
        pair[0] = member(
            "eni-1",
            &format!("data=ok control=ok pair=holder beat=ok at={at}"),
        );
        pair[1] = member(
            "eni-2",
            &format!("data=ok control=ok pair=standby beat=ok synced=1300 at={at}"),
        );
        fill_pair_lag(&mut pair);
        assert_eq!(lag(&pair[1]), None);
        // What the standby measured itself stands.
        pair[1] = member(
            "eni-2",
            &format!("data=ok control=ok pair=standby beat=ok synced=1300 lag=2400/30s at={at}"),
        );
        fill_pair_lag(&mut pair);
        assert_eq!(lag(&pair[1]), Some(2400));
    }

    #[test]
    fn a_pair_members_health_tag() {
        let now = humantime::parse_rfc3339("2026-11-25T10:01:00Z").expect("time");
        let r = parse_natd_health(
            "data=ok control=ok pair=standby peer=i-1 beat=ok synced=42 takeover=812ms@2026-11-25T09:00:00Z routes=0 at=2026-11-25T10:00:00Z",
            now,
        )
        .expect("parses");
        assert_eq!(
            r.pair,
            Some(PairReport {
                role: "standby".into(),
                peer: Some("i-1".into()),
                heartbeats: "ok".into(),
                synced_entries: Some(42),
                held_entries: None,
                behind_entries: None,
                behind_secs: None,
                last_takeover: Some("812ms@2026-11-25T09:00:00Z".into()),
            })
        );
        // The standby's own measure of its lag.
        for (lag, want) in [
            ("lag=0", (Some(0), Some(0))),
            ("lag=1200/45s", (Some(1200), Some(45))),
            ("lag=nonsense", (None, None)),
        ] {
            let r = parse_natd_health(
                &format!("data=ok control=ok pair=standby beat=ok synced=42 {lag} at=2026-11-25T10:00:00Z"),
                now,
            )
            .and_then(|r| r.pair)
            .expect("parses");
            assert_eq!((r.behind_entries, r.behind_secs), want, "{lag}");
        }
        let single = parse_natd_health("data=ok control=ok at=2026-11-25T10:00:00Z", now);
        assert_eq!(single.expect("parses").pair, None);
    }

    #[test]
    fn natd_health_tag() {
        let now = humantime::parse_rfc3339("2026-11-25T10:01:00Z").expect("time");
        let r = parse_natd_health(
            "data=ok control=ok routes=2 api-outage=35s@2026-11-25T09:59:00Z at=2026-11-25T10:00:00Z",
            now,
        )
        .expect("parses");
        assert_eq!((r.data.as_str(), r.control.as_str()), ("ok", "ok"));
        assert_eq!(r.routes, Some(2));
        assert_eq!(r.age_secs, 60);
        assert!(!r.stale);
        assert_eq!(
            r.api_outage,
            Some(ApiOutage {
                secs: 35,
                ended: "2026-11-25T09:59:00Z".into()
            })
        );
        let old = parse_natd_health(
            "data=failing control=trouble failing=2/3 at=2026-11-25T09:00:00Z",
            now,
        )
        .expect("parses");
        assert!(old.stale);
        assert_eq!(old.failing.as_deref(), Some("2/3"));
        assert_eq!(parse_natd_health("something else", now), None);
        assert_eq!(
            parse_natd_health("data=ok control=ok at=yesterday", now),
            None
        );
    }

    #[test]
    fn a_fresh_failing_natd_report_breaks_the_route_a_stale_one_does_not() {
        let now = std::time::SystemTime::now();
        let stamp = humantime::format_rfc3339_seconds(now).to_string();
        let mut i = instance(Some("eni-1"));
        let t = table(Some("eni-1"), Some("active"));
        assert!(route_works(&t, std::slice::from_ref(&i), &[]).0);
        i.natd = parse_natd_health(
            &format!("data=failing control=ok failing=2/3 at={stamp}"),
            now,
        );
        assert!(!route_works(&t, std::slice::from_ref(&i), &[]).0);
        i.natd = parse_natd_health(&format!("data=ok control=trouble at={stamp}"), now);
        assert!(
            route_works(&t, std::slice::from_ref(&i), &[]).0,
            "control-plane trouble does not break forwarding"
        );
        i.natd = parse_natd_health("data=failing control=ok at=2020-01-01T00:00:00Z", now);
        assert!(
            route_works(&t, std::slice::from_ref(&i), &[]).0,
            "stale: unknown"
        );
    }

    fn gateway(id: &str, az: &str, state: &str) -> Gateway {
        Gateway {
            id: id.into(),
            az: az.into(),
            state: state.into(),
            public_ip: None,
        }
    }

    fn table(target: Option<&str>, state: Option<&str>) -> TableFacts {
        TableFacts {
            id: "rtb-1".into(),
            azs: vec!["a".into()],
            target: target.map(Into::into),
            state: state.map(Into::into),
        }
    }

    #[test]
    fn health_rule() {
        let running = [instance(Some("eni-1"))];
        let stopped = [instance(None)];
        let gws = [
            gateway("nat-a", "a", "available"),
            gateway("nat-p", "a", "pending"),
            gateway("nat-b", "b", "available"),
            gateway("nat-r", "regional", "available"),
        ];
        // (table, instances, gateways) -> (ok, cross_az)
        type Case<'a> = (TableFacts, &'a [Instance], &'a [Gateway], (bool, bool));
        let cases: &[Case] = &[
            (
                table(Some("eni-1"), Some("active")),
                &running,
                &[],
                (true, false),
            ),
            (
                table(Some("i-1"), Some("active")),
                &running,
                &[],
                (true, false),
            ),
            (
                table(Some("eni-1"), Some("active")),
                &stopped,
                &[],
                (false, false),
            ),
            (
                table(Some("eni-1"), Some("blackhole")),
                &running,
                &[],
                (false, false),
            ),
            (
                table(Some("eni-other"), Some("active")),
                &running,
                &[],
                (false, false),
            ),
            (table(None, None), &running, &[], (false, false)),
            (
                table(Some("nat-a"), Some("active")),
                &[],
                &gws,
                (true, false),
            ),
            (
                table(Some("nat-p"), Some("active")),
                &[],
                &gws,
                (false, false),
            ),
            (
                table(Some("nat-b"), Some("active")),
                &[],
                &gws,
                (true, true),
            ),
            (
                table(Some("nat-r"), Some("active")),
                &[],
                &gws,
                (true, false),
            ),
            (
                table(Some("nat-a"), Some("blackhole")),
                &[],
                &gws,
                (false, false),
            ),
            (
                table(Some("igw-1"), Some("active")),
                &running,
                &gws,
                (false, false),
            ),
        ];
        for (t, i, g, want) in cases {
            assert_eq!(route_works(t, i, g), *want, "{t:?}");
        }
    }

    #[test]
    fn healthy_needs_a_table_and_every_table_working() {
        let facts = |tables: Vec<TableFacts>| Facts {
            stack: "s".into(),
            instances: vec![instance(Some("eni-1"))],
            gateways: vec![],
            tables,
            lambda: None,
            metrics: vec![],
            alarms: vec![],
            ipv6: None,
        };
        assert!(!assess(facts(vec![])).healthy, "no table: nothing routed");
        let mut v6 = facts(vec![table(Some("eni-1"), Some("active"))]);
        v6.ipv6 = Some(Ipv6Egress {
            gateway: Some("eigw-1".into()),
            routes: vec![("rtb-1".into(), None)],
            ok: false,
        });
        assert!(!assess(v6).healthy, "IPv6 egress broken: not healthy");
        assert!(assess(facts(vec![table(Some("eni-1"), Some("active"))])).healthy);
        let mut broken = table(None, None);
        broken.id = "rtb-2".into();
        let s = assess(facts(vec![table(Some("eni-1"), Some("active")), broken]));
        assert!(!s.healthy);
        assert_eq!(
            s.route_tables.iter().map(|t| t.ok).collect::<Vec<_>>(),
            vec![true, false]
        );
        assert!(facts(vec![]).exists(), "an instance is part of the stack");
        let nothing = Facts {
            instances: vec![],
            ..facts(vec![])
        };
        assert!(!nothing.exists(), "a stack with nothing does not exist");
    }
}
