//! What natd publishes to CloudWatch and the alarms natctl puts on it: one catalog, so
//! the publisher, the alarms, `status`, `cost` and exported templates name each metric
//! the same way.
//!
//! Where a NAT gateway has a metric with the same meaning, natd publishes it under the
//! gateway's name (namespace `AWS/NATGateway` there, [`NAMESPACE`] here), so dashboards
//! and alarms written for a gateway read a natd stack with the namespace and dimension
//! changed. The rest is what only a NAT instance needs watched: the ENA driver's network
//! allowances, the connection table, source ports, the pair.
//!
//! Each minute's point carries the dimension `StackName` (the stack reads as one
//! gateway, a pair as one); a pair's members publish it also with `StackName` and
//! `InstanceId` (one member). A single instance is its stack, so it publishes once.
//!
//! Cost (CloudWatch bills each metric, a name with its dimensions, per month, prorated
//! by the hour it is published in): levels are published every minute; counts only in
//! minutes they are above zero, so the error counters cost nothing while all is well.

/// The CloudWatch namespace natd publishes in (and the one its IAM policy allows).
pub const NAMESPACE: &str = "natd";
/// The dimension naming the stack.
pub const STACK_DIMENSION: &str = "StackName";
/// The dimension naming the instance.
pub const INSTANCE_DIMENSION: &str = "InstanceId";
/// Seconds per published point.
pub const PERIOD_SECS: i32 = 60;
/// Most points in one PutMetricData request (CloudWatch's limit: 1,000 metrics per
/// request).
pub const PUT_MAX_DATUMS: usize = 1000;

/// How a metric's minute is summed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A level at the end of the minute (alarm on Maximum or Minimum).
    Gauge,
    /// Events during the minute (alarm on Sum).
    Count,
}

/// One published metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// Its name.
    pub name: &'static str,
    /// CloudWatch's unit.
    pub unit: &'static str,
    /// Level or events.
    pub kind: Kind,
    /// A NAT gateway's metric of the same meaning.
    pub as_gateway: bool,
    /// Published by pair members only.
    pub pair_only: bool,
    /// Zero while all is well (an error or event counter): published only in minutes
    /// it is above zero, so billed only then.
    pub quiet: bool,
    /// What it means.
    pub what: &'static str,
}

const fn m(
    name: &'static str,
    unit: &'static str,
    kind: Kind,
    as_gateway: bool,
    what: &'static str,
) -> Metric {
    Metric {
        name,
        unit,
        kind,
        as_gateway,
        pair_only: false,
        quiet: false,
        what,
    }
}

/// An error or event counter ([`Metric::quiet`]).
const fn q(name: &'static str, as_gateway: bool, what: &'static str) -> Metric {
    Metric {
        quiet: true,
        ..m(name, "Count", Kind::Count, as_gateway, what)
    }
}

/// Active connections through the instance.
pub const ACTIVE_CONNECTIONS: &str = "ActiveConnectionCount";
/// New connections attempted.
pub const CONNECTION_ATTEMPTS: &str = "ConnectionAttemptCount";
/// Connections established (the destination answered).
pub const CONNECTIONS_ESTABLISHED: &str = "ConnectionEstablishedCount";
/// Open connections that timed out idle.
pub const IDLE_TIMEOUTS: &str = "IdleTimeoutCount";
/// Connections that could not get a source port.
pub const ERROR_PORT_ALLOCATION: &str = "ErrorPortAllocation";
/// Packets dropped.
pub const PACKETS_DROP: &str = "PacketsDropCount";
/// Bytes from the VPC out to destinations.
pub const BYTES_OUT_TO_DESTINATION: &str = "BytesOutToDestination";
/// Bytes from destinations back.
pub const BYTES_IN_FROM_DESTINATION: &str = "BytesInFromDestination";
/// Bytes from the VPC's clients in.
pub const BYTES_IN_FROM_SOURCE: &str = "BytesInFromSource";
/// Bytes back to the VPC's clients.
pub const BYTES_OUT_TO_SOURCE: &str = "BytesOutToSource";
/// Packets from the VPC out to destinations.
pub const PACKETS_OUT_TO_DESTINATION: &str = "PacketsOutToDestination";
/// Packets from destinations back.
pub const PACKETS_IN_FROM_DESTINATION: &str = "PacketsInFromDestination";
/// Packets from the VPC's clients in.
pub const PACKETS_IN_FROM_SOURCE: &str = "PacketsInFromSource";
/// Packets back to the VPC's clients.
pub const PACKETS_OUT_TO_SOURCE: &str = "PacketsOutToSource";
/// Any ENA allowance exceeded (the sum of the five counters).
pub const ALLOWANCE_EXCEEDED: &str = "AllowanceExceeded";
/// Connection table use.
pub const CONNTRACK_USED_PERCENT: &str = "ConntrackUsedPercent";
/// The data plane forwards (1) or not (0).
pub const DATA_PLANE_OK: &str = "DataPlaneOk";
/// A pair's standby is ready (1) or not (0).
pub const STANDBY_READY: &str = "StandbyReady";
/// Failovers (this instance took the routes over).
pub const FAILOVERS: &str = "FailoverCount";
/// Source ports in use towards the busiest destination.
pub const PORTS_BUSIEST_DESTINATION: &str = "PortsInUseBusiestDestination";

/// The ENA driver's allowance counters (ethtool statistics), as natd publishes them:
/// (driver's name, metric name). Each `*_exceeded` counts packets queued or dropped
/// because the instance exceeded an allowance of its type; `conntrack_allowance_available`
/// is how many more connections the instance type tracks before it starts dropping.
pub const ENA_ALLOWANCES: [(&str, &str); 6] = [
    ("bw_in_allowance_exceeded", "BwInAllowanceExceeded"),
    ("bw_out_allowance_exceeded", "BwOutAllowanceExceeded"),
    ("pps_allowance_exceeded", "PpsAllowanceExceeded"),
    ("conntrack_allowance_exceeded", "ConntrackAllowanceExceeded"),
    ("linklocal_allowance_exceeded", "LinklocalAllowanceExceeded"),
    (
        "conntrack_allowance_available",
        "ConntrackAllowanceAvailable",
    ),
];

/// Every metric natd publishes.
pub const METRICS: [Metric; 29] = [
    m(
        ACTIVE_CONNECTIONS,
        "Count",
        Kind::Gauge,
        true,
        "connections through the instance (masqueraded and tracked) at the end of the minute",
    ),
    m(
        CONNECTION_ATTEMPTS,
        "Count",
        Kind::Count,
        true,
        "new connections from the VPC forwarded out (first packets, retries included)",
    ),
    m(
        CONNECTIONS_ESTABLISHED,
        "Count",
        Kind::Count,
        true,
        "connections the destination answered (the first reply of each, forwarded back)",
    ),
    q(
        IDLE_TIMEOUTS,
        true,
        "open connections (TCP established, UDP streams) that the kernel forgot after its idle timeout, not closed (Linux keeps an idle TCP connection 5 days, a NAT gateway 350 s)",
    ),
    q(
        ERROR_PORT_ALLOCATION,
        true,
        "connections dropped because no source port was free (the kernel's failed conntrack inserts)",
    ),
    q(
        PACKETS_DROP,
        true,
        "packets natd's forwarding chain dropped (invalid, or not from the VPC) and conntrack drops",
    ),
    m(
        BYTES_OUT_TO_DESTINATION,
        "Bytes",
        Kind::Count,
        true,
        "bytes from the VPC forwarded to destinations",
    ),
    m(
        BYTES_IN_FROM_SOURCE,
        "Bytes",
        Kind::Count,
        true,
        "bytes received from the VPC's clients to forward (the same packets as BytesOutToDestination)",
    ),
    m(
        BYTES_IN_FROM_DESTINATION,
        "Bytes",
        Kind::Count,
        true,
        "bytes of replies from destinations forwarded back",
    ),
    m(
        BYTES_OUT_TO_SOURCE,
        "Bytes",
        Kind::Count,
        true,
        "bytes sent back to the VPC's clients (the same packets as BytesInFromDestination)",
    ),
    m(
        PACKETS_OUT_TO_DESTINATION,
        "Count",
        Kind::Count,
        true,
        "packets from the VPC forwarded to destinations",
    ),
    m(
        PACKETS_IN_FROM_SOURCE,
        "Count",
        Kind::Count,
        true,
        "packets received from the VPC's clients to forward",
    ),
    m(
        PACKETS_IN_FROM_DESTINATION,
        "Count",
        Kind::Count,
        true,
        "packets of replies from destinations forwarded back",
    ),
    m(
        PACKETS_OUT_TO_SOURCE,
        "Count",
        Kind::Count,
        true,
        "packets sent back to the VPC's clients",
    ),
    q(
        "BwInAllowanceExceeded",
        false,
        "packets queued or dropped: inbound bandwidth above the instance type's allowance",
    ),
    q(
        "BwOutAllowanceExceeded",
        false,
        "packets queued or dropped: outbound bandwidth above the instance type's allowance",
    ),
    q(
        "PpsAllowanceExceeded",
        false,
        "packets queued or dropped: packets per second above the instance type's allowance",
    ),
    q(
        "ConntrackAllowanceExceeded",
        false,
        "packets dropped: the instance type's connection tracking allowance is full",
    ),
    q(
        "LinklocalAllowanceExceeded",
        false,
        "packets dropped: too many packets to link-local services (DNS, IMDS, NTP)",
    ),
    m(
        "ConntrackAllowanceAvailable",
        "Count",
        Kind::Gauge,
        false,
        "connections the instance type still tracks before it drops",
    ),
    q(
        ALLOWANCE_EXCEEDED,
        false,
        "the sum of the five *AllowanceExceeded counters (one alarm for any)",
    ),
    m(
        "ConntrackEntries",
        "Count",
        Kind::Gauge,
        false,
        "entries in the kernel's connection table",
    ),
    m(
        CONNTRACK_USED_PERCENT,
        "Percent",
        Kind::Gauge,
        false,
        "the kernel's connection table use (entries of nf_conntrack_max)",
    ),
    m(
        PORTS_BUSIEST_DESTINATION,
        "Count",
        Kind::Gauge,
        false,
        "source ports in use towards the busiest destination (address, port, protocol); it runs out at the port range's size",
    ),
    m(
        DATA_PLANE_OK,
        "Count",
        Kind::Gauge,
        false,
        "1 when the last data-plane check found the instance forwarding, else 0",
    ),
    q(
        FAILOVERS,
        false,
        "times this instance took the stack's routes over from another target",
    ),
    Metric {
        quiet: true,
        ..m(
            "FailoverGapMilliseconds",
            "Milliseconds",
            Kind::Gauge,
            false,
            "a failover's measured gap: from the last heartbeat heard to the routes moved (published with the failover)",
        )
    },
    Metric {
        pair_only: true,
        ..m(
            STANDBY_READY,
            "Count",
            Kind::Gauge,
            false,
            "a pair: 1 when the member finds the standby ready to take over, else 0 (the holder: it hears the standby's heartbeats; the standby: it hears the holder and its copy of the connections is in step)",
        )
    },
    q(
        "PublishDropped",
        false,
        "points natd dropped because CloudWatch could not take them for long (its buffer was full, oldest first)",
    ),
];

/// The metric named `name`.
pub fn metric(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.name == name)
}

/// How an alarm compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Above the threshold.
    Above,
    /// Below the threshold.
    Below,
}

impl Compare {
    /// CloudWatch's name of the comparison.
    pub fn as_cloudwatch(&self) -> &'static str {
        match self {
            Compare::Above => "GreaterThanThreshold",
            Compare::Below => "LessThanThreshold",
        }
    }
}

/// One alarm natctl creates with a stack (on the stack's dimension).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alarm {
    /// Its name within the stack ([`crate::Names::alarm`]).
    pub suffix: &'static str,
    /// The metric.
    pub metric: &'static str,
    /// `Sum`, `Maximum` or `Minimum`.
    pub statistic: &'static str,
    /// How it compares.
    pub compare: Compare,
    /// The threshold.
    pub threshold: f64,
    /// Minutes in a row the threshold is crossed before the alarm fires.
    pub minutes: i32,
    /// Pair stacks only.
    pub pair_only: bool,
    /// Missing data breaches (a silent stack is in alarm) rather than not.
    pub missing_breaches: bool,
    /// What it means, and what to do.
    pub what: &'static str,
}

/// Every alarm natctl creates with a NAT-instance stack.
pub const ALARMS: [Alarm; 6] = [
    Alarm {
        suffix: "port-allocation-errors",
        metric: ERROR_PORT_ALLOCATION,
        statistic: "Sum",
        compare: Compare::Above,
        threshold: 0.0,
        minutes: 1,
        pair_only: false,
        missing_breaches: false,
        what: "connections failed for want of a source port towards one destination: add egress addresses (--ha --egress-ips) or spread destinations",
    },
    Alarm {
        suffix: "allowance-exceeded",
        metric: ALLOWANCE_EXCEEDED,
        statistic: "Sum",
        compare: Compare::Above,
        threshold: 0.0,
        minutes: 1,
        pair_only: false,
        missing_breaches: false,
        what: "the instance exceeded a network allowance of its type (bandwidth, packets per second, connections, link-local): a larger instance type",
    },
    Alarm {
        suffix: "connection-table",
        metric: CONNTRACK_USED_PERCENT,
        statistic: "Maximum",
        compare: Compare::Above,
        threshold: 80.0,
        minutes: 2,
        pair_only: false,
        missing_breaches: false,
        what: "the kernel's connection table is over 80 % full; new connections drop when it is full",
    },
    Alarm {
        suffix: "data-plane",
        metric: DATA_PLANE_OK,
        statistic: "Minimum",
        compare: Compare::Below,
        threshold: 1.0,
        minutes: 2,
        pair_only: false,
        missing_breaches: true,
        what: "the NAT instance does not forward (or publishes nothing): natd replaces it; see natctl doctor",
    },
    Alarm {
        suffix: "failover",
        metric: FAILOVERS,
        statistic: "Sum",
        compare: Compare::Above,
        threshold: 0.0,
        minutes: 1,
        pair_only: false,
        missing_breaches: false,
        what: "the routes moved to another instance (a failover or a replacement)",
    },
    Alarm {
        suffix: "no-standby",
        metric: STANDBY_READY,
        statistic: "Minimum",
        compare: Compare::Below,
        threshold: 1.0,
        minutes: 3,
        pair_only: true,
        missing_breaches: true,
        what: "the pair has no standby ready to take over: the next failure is an outage",
    },
];

/// The alarms of a stack: the pair's too when `pair`.
pub fn alarms(pair: bool) -> impl Iterator<Item = &'static Alarm> {
    ALARMS.iter().filter(move |a| pair || !a.pair_only)
}

/// How many metrics (a name with its dimensions: what CloudWatch bills per month) a
/// stack publishes while all is well: the levels and the traffic counts, per stack, and
/// for a pair per member too. The quiet counters add while they count.
pub fn billed_metrics(pair: bool) -> u32 {
    let per_dimension = METRICS
        .iter()
        .filter(|m| (pair || !m.pair_only) && !m.quiet)
        .count() as u32;
    if pair {
        per_dimension * 3
    } else {
        per_dimension
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alarm_watches_a_published_metric_and_names_are_unique() {
        for a in &ALARMS {
            let m = metric(a.metric).unwrap_or_else(|| panic!("{} watches nothing", a.suffix));
            assert!(!m.pair_only || a.pair_only, "{}", a.suffix);
            let stat_fits = match m.kind {
                Kind::Count => a.statistic == "Sum",
                Kind::Gauge => a.statistic != "Sum",
            };
            assert!(stat_fits, "{}: {} of a {:?}", a.suffix, a.statistic, m.kind);
        }
        let mut names: Vec<_> = METRICS.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        for (_, name) in ENA_ALLOWANCES {
            assert!(metric(name).is_some(), "{name}");
        }
    }

    #[test]
    fn a_pair_has_the_standby_alarm_and_a_single_instance_not() {
        assert!(alarms(true).any(|a| a.suffix == "no-standby"));
        assert!(!alarms(false).any(|a| a.suffix == "no-standby"));
        // Levels: connections, conntrack available/entries/percent, ports, data plane;
        // counts: attempts, established and the eight bytes and packets.
        assert_eq!(billed_metrics(false), 6 + 10);
        assert_eq!(billed_metrics(true), (7 + 10) * 3);
        assert!(
            METRICS
                .iter()
                .filter(|m| m.quiet)
                .all(|m| m.name != ACTIVE_CONNECTIONS)
        );
    }
}
