//! Monthly cost of dev (one NAT instance), prod zonal (one NAT gateway per AZ) and prod
//! regional (one regional NAT gateway, billed per AZ it is active in) egress, from
//! stated, overridable prices. Pure: the caller renders the result.

use serde::Serialize;

/// Hours in an average month (730 = 8760 / 12), as AWS's pricing pages use.
pub const HOURS_PER_MONTH: f64 = 730.0;

/// Prices in USD. Defaults are us-east-1 on-demand list prices; override them for
/// another region or a negotiated rate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prices {
    /// NAT gateway, per hour.
    pub nat_gateway_hour: f64,
    /// NAT gateway data processing, per GB.
    pub nat_gateway_gb: f64,
    /// Regional NAT gateway, per hour for each AZ it is active in (AWS bills it like a
    /// zonal gateway in each AZ it has expanded to).
    pub regional_nat_gateway_az_hour: f64,
    /// Public IPv4 address (Elastic IP or auto-assigned), per hour.
    pub public_ipv4_hour: f64,
    /// NAT instance, per hour (t4g.nano 0.0042, t4g.micro 0.0084, t4g.small 0.0168).
    pub instance_hour: f64,
    /// The instance's root volume, gp3 per GB-month.
    pub ebs_gb_month: f64,
    /// Root volume size in GB (AL2023 minimal).
    pub ebs_gb: f64,
    /// Inter-AZ transfer, per GB in each direction: dev's single NAT instance carries
    /// the other AZs' traffic across AZs.
    pub cross_az_gb: f64,
    /// CloudWatch custom metric, per metric-month (the first 10,000 tier).
    pub metric_month: f64,
    /// CloudWatch PutMetricData, per 1,000 requests.
    pub metric_requests_1000: f64,
    /// CloudWatch alarm (standard resolution), per alarm-month.
    pub alarm_month: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Self {
            nat_gateway_hour: 0.045,
            nat_gateway_gb: 0.045,
            regional_nat_gateway_az_hour: 0.045,
            public_ipv4_hour: 0.005,
            instance_hour: 0.0084,
            ebs_gb_month: 0.08,
            ebs_gb: 8.0,
            cross_az_gb: 0.01,
            metric_month: 0.30,
            metric_requests_1000: 0.01,
            alarm_month: 0.10,
        }
    }
}

impl Prices {
    /// Sets one price by name (the field names above); errors name the bad key or value.
    pub fn set(&mut self, assignment: &str) -> Result<(), String> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| format!("price override {assignment:?}: expected KEY=VALUE"))?;
        let v: f64 = value
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| {
                format!("price override {key}: {value:?} is not a non-negative number")
            })?;
        let slot = match key {
            "nat_gateway_hour" => &mut self.nat_gateway_hour,
            "nat_gateway_gb" => &mut self.nat_gateway_gb,
            "regional_nat_gateway_az_hour" => &mut self.regional_nat_gateway_az_hour,
            "public_ipv4_hour" => &mut self.public_ipv4_hour,
            "instance_hour" => &mut self.instance_hour,
            "ebs_gb_month" => &mut self.ebs_gb_month,
            "ebs_gb" => &mut self.ebs_gb,
            "cross_az_gb" => &mut self.cross_az_gb,
            "metric_month" => &mut self.metric_month,
            "metric_requests_1000" => &mut self.metric_requests_1000,
            "alarm_month" => &mut self.alarm_month,
            other => {
                return Err(format!(
                    "unknown price {other:?}; known: nat_gateway_hour, nat_gateway_gb, regional_nat_gateway_az_hour, public_ipv4_hour, instance_hour, ebs_gb_month, ebs_gb, cross_az_gb, metric_month, metric_requests_1000, alarm_month"
                ));
            }
        };
        *slot = v;
        Ok(())
    }
}

/// One line of an estimate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    /// What is charged.
    pub item: String,
    /// USD per month.
    pub usd: f64,
}

/// A monthly estimate for one environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    /// `dev`, `prod` (zonal) or `prod-regional`.
    pub env: &'static str,
    /// The lines.
    pub lines: Vec<Line>,
    /// Their sum.
    pub total_usd: f64,
}

fn estimate(env: &'static str, lines: Vec<Line>) -> Estimate {
    let total_usd = lines.iter().map(|l| l.usd).sum();
    Estimate {
        env,
        lines,
        total_usd,
    }
}

/// Dev: one NAT instance with a public address; traffic from the other AZs crosses
/// AZs (both directions) to reach it, assuming traffic is spread evenly over `azs`.
pub fn dev(p: &Prices, azs: u32, gb: f64) -> Estimate {
    let other_az_share = f64::from(azs.saturating_sub(1)) / f64::from(azs.max(1));
    estimate(
        "dev",
        vec![
            Line {
                item: "NAT instance (1)".into(),
                usd: p.instance_hour * HOURS_PER_MONTH,
            },
            Line {
                item: "root volume".into(),
                usd: p.ebs_gb_month * p.ebs_gb,
            },
            Line {
                item: "public IPv4 (1)".into(),
                usd: p.public_ipv4_hour * HOURS_PER_MONTH,
            },
            Line {
                item: "data processing".into(),
                usd: 0.0,
            },
            Line {
                item: "cross-AZ transfer".into(),
                usd: gb * other_az_share * p.cross_az_gb * 2.0,
            },
        ]
        .into_iter()
        .chain(monitoring(p, 1))
        .collect(),
    )
}

/// Minutes in an average month: natd publishes once a minute per instance.
const MINUTES_PER_MONTH: f64 = HOURS_PER_MONTH * 60.0;

/// natd's CloudWatch metrics and the stack's alarms, for `instances` instances (a
/// pair: 2): the metrics billed while all is well (natd_contract::metrics::
/// billed_metrics; the quiet error counters add only in the hours they count), one
/// PutMetricData request per instance and minute, and the alarms natctl creates.
/// natd publishes with PutMetricData rather than the embedded metric format through
/// CloudWatch Logs: both bill the same custom metrics, and at one request a minute
/// the requests cost about as much as ingesting the same points as logs, without a
/// log group to keep.
fn monitoring(p: &Prices, instances: u32) -> Vec<Line> {
    let pair = instances > 1;
    let metrics = natd_contract::metrics::billed_metrics(pair);
    let alarms = natd_contract::metrics::alarms(pair).count();
    vec![
        Line {
            item: format!("CloudWatch metrics ({metrics})"),
            usd: f64::from(metrics) * p.metric_month,
        },
        Line {
            item: "CloudWatch requests".into(),
            usd: f64::from(instances) * MINUTES_PER_MONTH / 1000.0 * p.metric_requests_1000,
        },
        Line {
            item: format!("CloudWatch alarms ({alarms})"),
            usd: alarms as f64 * p.alarm_month,
        },
    ]
}

/// Dev with a hot standby (`--ha`): two NAT instances in one AZ, each with its own public
/// address (natd's API calls), plus the pair's egress Elastic IP(s); heartbeats and state
/// sync stay inside the AZ (free). Cross-AZ transfer as for dev.
pub fn dev_ha(p: &Prices, azs: u32, gb: f64, egress_ips: u32) -> Estimate {
    let mut e = dev(p, azs, gb);
    e.env = "dev-ha";
    e.lines[0] = Line {
        item: "NAT instances (2)".into(),
        usd: 2.0 * p.instance_hour * HOURS_PER_MONTH,
    };
    e.lines[1] = Line {
        item: "root volumes".into(),
        usd: 2.0 * p.ebs_gb_month * p.ebs_gb,
    };
    let addresses = 2 + egress_ips;
    e.lines[2] = Line {
        item: format!("public IPv4 ({addresses})"),
        usd: f64::from(addresses) * p.public_ipv4_hour * HOURS_PER_MONTH,
    };
    e.lines.truncate(5);
    e.lines.extend(monitoring(p, 2));
    estimate("dev-ha", e.lines)
}

/// Prod: one NAT gateway and one public address per AZ; AZ-local routes, so no
/// cross-AZ transfer.
pub fn prod(p: &Prices, azs: u32, gb: f64) -> Estimate {
    gateways(
        "prod",
        format!("NAT gateways ({azs})"),
        p.nat_gateway_hour,
        p,
        azs,
        gb,
    )
}

/// Prod regional: one regional NAT gateway, active (and billed) in every AZ with
/// workloads, with one AWS-provided public address per AZ (automatic mode); it keeps
/// traffic in its AZ, so no cross-AZ transfer. The same data processing rate.
pub fn prod_regional(p: &Prices, azs: u32, gb: f64) -> Estimate {
    gateways(
        "prod-regional",
        format!("regional NAT gateway ({azs} AZ)"),
        p.regional_nat_gateway_az_hour,
        p,
        azs,
        gb,
    )
}

/// NAT gateway egress billed `hour` per AZ, a public address per AZ, data processing,
/// no root volume and no cross-AZ transfer.
fn gateways(env: &'static str, item: String, hour: f64, p: &Prices, azs: u32, gb: f64) -> Estimate {
    let n = f64::from(azs);
    estimate(
        env,
        vec![
            Line {
                item,
                usd: hour * HOURS_PER_MONTH * n,
            },
            Line {
                item: "root volume".into(),
                usd: 0.0,
            },
            Line {
                item: format!("public IPv4 ({azs})"),
                usd: p.public_ipv4_hour * HOURS_PER_MONTH * n,
            },
            Line {
                item: "data processing".into(),
                usd: p.nat_gateway_gb * gb,
            },
            Line {
                item: "cross-AZ transfer".into(),
                usd: 0.0,
            },
            // A NAT gateway's metrics (AWS/NATGateway) are free; natctl creates no
            // alarms for it.
            Line {
                item: "CloudWatch metrics (0)".into(),
                usd: 0.0,
            },
            Line {
                item: "CloudWatch requests".into(),
                usd: 0.0,
            },
            Line {
                item: "CloudWatch alarms (0)".into(),
                usd: 0.0,
            },
        ],
    )
}

/// IPv6 egress through an egress-only internet gateway: no hourly charge, no data
/// processing, no public IPv4 address, no instance; the traffic stays in its AZ. It
/// serves destinations that speak IPv6 only: IPv4-only ones still need one of the NAT
/// options (see [`with_ipv6_share`]).
pub fn ipv6_only() -> Estimate {
    let zero = |item: &str| Line {
        item: item.to_string(),
        usd: 0.0,
    };
    estimate(
        "ipv6-only",
        vec![
            zero("egress-only internet gateway"),
            zero("root volume"),
            zero("public IPv4 (0)"),
            zero("data processing"),
            zero("cross-AZ transfer"),
            zero("CloudWatch metrics (0)"),
            zero("CloudWatch requests"),
            zero("CloudWatch alarms (0)"),
        ],
    )
}

/// `e` with `share` (0 to 1) of its traffic leaving by IPv6 through an egress-only
/// internet gateway instead: what is billed per GB through NAT (data processing, and
/// dev's cross-AZ transfer) shrinks by that share; the hourly lines stay, since IPv4
/// destinations still need the NAT.
pub fn with_ipv6_share(e: &Estimate, share: f64) -> Estimate {
    let share = share.clamp(0.0, 1.0);
    let lines = e
        .lines
        .iter()
        .map(|l| Line {
            item: l.item.clone(),
            usd: if l.item == "data processing" || l.item == "cross-AZ transfer" {
                l.usd * (1.0 - share)
            } else {
                l.usd
            },
        })
        .collect();
    estimate(e.env, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_costs_nothing_and_a_share_of_it_saves_only_the_per_gb_lines() {
        let p = Prices::default();
        assert_eq!(ipv6_only().total_usd, 0.0);
        assert_eq!(ipv6_only().lines.len(), dev(&p, 2, 100.0).lines.len());
        let prod = prod(&p, 2, 100.0);
        let half = with_ipv6_share(&prod, 0.5);
        // Half of 100 GB x 0.045 no longer processed.
        assert!(
            (prod.total_usd - half.total_usd - 2.25).abs() < 1e-9,
            "{half:?}"
        );
        let dev = dev(&p, 2, 100.0);
        let all = with_ipv6_share(&dev, 1.0);
        // Dev's cross-AZ transfer goes; its instance stays.
        assert!(
            (dev.total_usd - all.total_usd - 1.0).abs() < 1e-9,
            "{all:?}"
        );
        assert_eq!(with_ipv6_share(&dev, 0.0), dev);
    }

    #[test]
    fn prod_is_per_az_and_per_gb() {
        let p = Prices::default();
        let e = prod(&p, 2, 100.0);
        // 2 x 0.045 x 730 + 2 x 0.005 x 730 + 100 x 0.045
        assert!((e.total_usd - (65.7 + 7.3 + 4.5)).abs() < 1e-9, "{e:?}");
    }

    #[test]
    fn regional_is_per_active_az_and_its_own_price() {
        let mut p = Prices::default();
        let r = prod_regional(&p, 2, 100.0);
        assert!((r.total_usd - prod(&p, 2, 100.0).total_usd).abs() < 1e-9);
        p.set("regional_nat_gateway_az_hour=0.05").expect("valid");
        let r = prod_regional(&p, 3, 0.0);
        // 3 x 0.05 x 730 + 3 x 0.005 x 730
        assert!((r.total_usd - (109.5 + 10.95)).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn a_pair_is_two_instances_and_its_addresses() {
        let p = Prices::default();
        let one = dev(&p, 3, 100.0);
        let pair = dev_ha(&p, 3, 100.0, 1);
        assert_eq!(pair.lines.len(), one.lines.len());
        assert!((pair.lines[0].usd - 2.0 * one.lines[0].usd).abs() < 1e-9);
        assert!((pair.lines[2].usd - 3.0 * one.lines[2].usd).abs() < 1e-9);
        assert_eq!(pair.lines[4], one.lines[4]);
        assert!(dev_ha(&p, 3, 100.0, 4).total_usd > pair.total_usd);
        // Still far below prod's gateways.
        assert!(pair.total_usd < prod(&p, 3, 100.0).total_usd);
    }

    #[test]
    fn dev_charges_cross_az_for_other_azs_only() {
        let p = Prices::default();
        let one = dev(&p, 1, 100.0);
        let two = dev(&p, 2, 100.0);
        assert!((two.total_usd - one.total_usd - 100.0 * 0.5 * 0.01 * 2.0).abs() < 1e-9);
        // 0.0084 x 730 + 0.08 x 8 + 0.005 x 730, and CloudWatch: 16 metrics x 0.30,
        // 43,800 requests x 0.01 / 1000, 5 alarms x 0.10.
        assert!(
            (one.total_usd - (6.132 + 0.64 + 3.65 + 4.8 + 0.438 + 0.5)).abs() < 1e-9,
            "{one:?}"
        );
        let pair = dev_ha(&p, 1, 0.0, 1);
        let line = |e: &Estimate, what: &str| {
            e.lines
                .iter()
                .find(|l| l.item.starts_with(what))
                .map(|l| l.usd)
                .expect(what)
        };
        // A pair: the stack's and each member's metrics, two publishers, six alarms.
        assert!((line(&pair, "CloudWatch metrics (51)") - 15.3).abs() < 1e-9);
        assert!((line(&pair, "CloudWatch requests") - 0.876).abs() < 1e-9);
        assert!((line(&pair, "CloudWatch alarms (6)") - 0.6).abs() < 1e-9);
    }

    #[test]
    fn overrides_are_checked() {
        let mut p = Prices::default();
        p.set("instance_hour=0.0042").expect("valid");
        assert_eq!(p.instance_hour, 0.0042);
        assert!(
            p.set("nat_hour=1")
                .expect_err("unknown")
                .contains("nat_hour")
        );
        assert!(
            p.set("instance_hour=-1")
                .expect_err("negative")
                .contains("-1")
        );
        assert!(
            p.set("instance_hour")
                .expect_err("no =")
                .contains("KEY=VALUE")
        );
    }
}
