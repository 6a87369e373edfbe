//! natd's metrics in CloudWatch, published by natd itself (no agent): the catalog of
//! `natd_contract::metrics`, one point per metric and minute, in as few PutMetricData
//! requests as fit (1,000 points each).
//!
//! The publisher runs in its own task and never touches the data plane: the agent hands
//! it a [`Sample`] each pass (what it concluded), and once a minute the publisher reads
//! the kernel's counters itself (natd's forward chain, conntrack's statistics, the ENA
//! driver's allowance counters), turns them into the minute's points and sends them.
//! When CloudWatch does not answer, the points wait in a bounded buffer (the oldest
//! minutes are dropped first, and counted in `PublishDropped`) and go with the next
//! request that succeeds.

use crate::contract::metrics as catalog;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// What the agent concluded at its last pass (the kernel's numbers the publisher reads
/// itself, once a period: [`Sources::read`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// The data plane forwards; `None` until natd's first data-plane check (nothing
    /// is said of it before natd knows).
    pub forwarding: Option<bool>,
    /// A pair: its standby is ready (on the holder: a peer heard; on the standby: itself
    /// in step). `None` outside a pair.
    pub standby_ready: Option<bool>,
    /// The last time this instance took the routes over, and the gap it measured (a
    /// pair's takeover: from the decision until the addresses moved).
    pub takeover: Option<(SystemTime, Option<u64>)>,
}

/// The kernel's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// natd's forward chain: see [`crate::kernel::Traffic`].
    pub traffic: Option<crate::kernel::Traffic>,
    /// conntrack's statistics, summed over CPUs: failed inserts (no free source
    /// port, or a clash), drops, early drops.
    pub conntrack: Option<ConntrackStats>,
    /// The ENA driver's statistics, by name.
    pub ena: BTreeMap<String, u64>,
    /// Masqueraded connections tracked, and those to the busiest destination.
    pub nat: Option<(u64, u64)>,
    /// Open connections that timed out idle since the last reading (not closed).
    pub idle_timeouts: u64,
    /// The connection table's entries and size.
    pub table: Option<(u64, u64)>,
}

/// `/proc/net/stat/nf_conntrack`, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConntrackStats {
    /// `insert_failed`.
    pub insert_failed: u64,
    /// `drop` and `early_drop`.
    pub dropped: u64,
}

/// Parses `/proc/net/stat/nf_conntrack`: a header of column names, then one line of
/// hexadecimal values per CPU.
pub fn parse_conntrack_stats(text: &str) -> Option<ConntrackStats> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (fail, drop, early) = (col("insert_failed")?, col("drop")?, col("early_drop")?);
    let mut s = ConntrackStats::default();
    for l in lines {
        let v: Vec<u64> = l
            .split_whitespace()
            .map(|x| u64::from_str_radix(x, 16).unwrap_or(0))
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        s.insert_failed += at(fail);
        s.dropped += at(drop) + at(early);
    }
    Some(s)
}

/// Parses `ethtool -S` output (`     name: value` lines).
pub fn parse_ethtool(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Where the counters come from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The kernel (natd's chains).
    pub kernel: crate::kernel::apply::Kernel,
    /// The egress interface (for `ethtool -S`).
    pub interface: String,
    /// A file in `ethtool -S` form read instead of running ethtool (`ena_stats_file`).
    pub ena_file: Option<PathBuf>,
    /// Seconds between readings: open connections whose timeout ends sooner are
    /// watched until the next one.
    pub horizon: u64,
    /// The open connections of the last reading that were about to time out.
    pub watched: BTreeSet<String>,
}

impl Sources {
    /// Reads every counter it can; one that cannot be read is left out.
    pub async fn read(&mut self) -> Counters {
        let traffic = self
            .kernel
            .iptables_save_counters()
            .await
            .ok()
            .map(|s| crate::kernel::traffic(&s));
        let conntrack = tokio::fs::read_to_string("/proc/net/stat/nf_conntrack")
            .await
            .ok()
            .and_then(|t| parse_conntrack_stats(&t));
        let ena = match &self.ena_file {
            Some(f) => tokio::fs::read_to_string(f)
                .await
                .map(|t| parse_ethtool(&t))
                .unwrap_or_default(),
            None => tokio::process::Command::new("ethtool")
                .args(["-S", &self.interface])
                .output()
                .await
                .ok()
                .filter(|o| o.status.success())
                .map(|o| parse_ethtool(&String::from_utf8_lossy(&o.stdout)))
                .unwrap_or_default(),
        };
        // A connection about to time out at the last reading and gone now timed out
        // idle: a packet would have restarted its timeout, a close would have left it
        // in the table (closing states keep an entry for seconds to minutes).
        let (nat, idle_timeouts) = match self
            .kernel
            .nat_connections_within(Some(self.horizon), &self.watched)
            .await
        {
            Ok(n) => {
                let gone = self.watched.difference(&n.present).count() as u64;
                self.watched = n.expiring;
                (Some((n.total as u64, n.busiest as u64)), gone)
            }
            Err(_) => (None, 0),
        };
        let sysctl = |key| {
            self.kernel
                .read_sysctl(key)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
        };
        let table = sysctl("net/netfilter/nf_conntrack_count")
            .zip(sysctl("net/netfilter/nf_conntrack_max"));
        Counters {
            traffic,
            conntrack,
            ena,
            nat,
            idle_timeouts,
            table,
        }
    }
}

/// One point: metric, value, when.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Metric name (of the catalog).
    pub metric: &'static str,
    /// Value.
    pub value: f64,
    /// When (the end of its minute).
    pub at: SystemTime,
}

/// Turns successive readings into each minute's points.
#[derive(Debug, Default)]
pub struct Minutes {
    last: Option<Counters>,
    takeover_seen: Option<SystemTime>,
}

/// A counter's growth since the last reading; a counter that went back (its chain was
/// rebuilt, the driver reset) counts from zero.
fn delta(now: u64, before: u64) -> u64 {
    if now >= before { now - before } else { now }
}

impl Minutes {
    /// The points of the minute ending `at`. Counts need a previous reading: the first
    /// minute after natd starts has levels only.
    pub fn points(&mut self, at: SystemTime, s: &Sample, c: &Counters) -> Vec<Point> {
        let mut v: Vec<(&'static str, f64)> = Vec::new();
        if let Some((total, busiest)) = c.nat {
            v.push((catalog::ACTIVE_CONNECTIONS, total as f64));
            v.push((catalog::PORTS_BUSIEST_DESTINATION, busiest as f64));
        }
        if let Some((entries, max)) = c.table {
            v.push(("ConntrackEntries", entries as f64));
            if max > 0 {
                v.push((
                    catalog::CONNTRACK_USED_PERCENT,
                    (entries as f64 * 100.0 / max as f64 * 10.0).round() / 10.0,
                ));
            }
        }
        if let Some(f) = s.forwarding {
            v.push((catalog::DATA_PLANE_OK, if f { 1.0 } else { 0.0 }));
        }
        if let Some(r) = s.standby_ready {
            v.push((catalog::STANDBY_READY, if r { 1.0 } else { 0.0 }));
        }
        if let Some(a) = c.ena.get("conntrack_allowance_available") {
            v.push(("ConntrackAllowanceAvailable", *a as f64));
        }
        if let Some((when, gap)) = s.takeover
            && self.takeover_seen != Some(when)
        {
            // Seen once natd is running: a takeover natd made before this publisher
            // started is not counted again after a restart.
            if self.takeover_seen.is_some() || self.last.is_some() {
                v.push((catalog::FAILOVERS, 1.0));
                if let Some(gap) = gap {
                    v.push(("FailoverGapMilliseconds", gap as f64));
                }
            }
            self.takeover_seen = Some(when);
        }
        if let Some(before) = &self.last {
            if let (Some(t), Some(b)) = (&c.traffic, &before.traffic) {
                let out_p = delta(t.out_packets, b.out_packets) as f64;
                let out_b = delta(t.out_bytes, b.out_bytes) as f64;
                let back_p = delta(t.back_packets, b.back_packets) as f64;
                let back_b = delta(t.back_bytes, b.back_bytes) as f64;
                v.extend([
                    (catalog::PACKETS_IN_FROM_SOURCE, out_p),
                    (catalog::PACKETS_OUT_TO_DESTINATION, out_p),
                    (catalog::BYTES_IN_FROM_SOURCE, out_b),
                    (catalog::BYTES_OUT_TO_DESTINATION, out_b),
                    (catalog::PACKETS_IN_FROM_DESTINATION, back_p),
                    (catalog::PACKETS_OUT_TO_SOURCE, back_p),
                    (catalog::BYTES_IN_FROM_DESTINATION, back_b),
                    (catalog::BYTES_OUT_TO_SOURCE, back_b),
                    (
                        catalog::CONNECTION_ATTEMPTS,
                        delta(t.new_packets, b.new_packets) as f64,
                    ),
                    (
                        catalog::CONNECTIONS_ESTABLISHED,
                        delta(t.established, b.established) as f64,
                    ),
                ]);
            }
            if c.nat.is_some() {
                v.push((catalog::IDLE_TIMEOUTS, c.idle_timeouts as f64));
            }
            let mut dropped = c
                .traffic
                .as_ref()
                .zip(before.traffic.as_ref())
                .map(|(t, b)| delta(t.dropped_packets, b.dropped_packets))
                .unwrap_or(0);
            if let (Some(k), Some(b)) = (&c.conntrack, &before.conntrack) {
                let failed = delta(k.insert_failed, b.insert_failed);
                v.push((catalog::ERROR_PORT_ALLOCATION, failed as f64));
                dropped += delta(k.dropped, b.dropped) + failed;
            }
            v.push((catalog::PACKETS_DROP, dropped as f64));
            let mut any = 0;
            let mut seen = false;
            for (driver, name) in catalog::ENA_ALLOWANCES {
                if !driver.ends_with("_exceeded") {
                    continue;
                }
                if let (Some(n), Some(b)) = (c.ena.get(driver), before.ena.get(driver)) {
                    let d = delta(*n, *b);
                    any += d;
                    seen = true;
                    v.push((name, d as f64));
                }
            }
            if seen {
                v.push((catalog::ALLOWANCE_EXCEEDED, any as f64));
            }
        }
        self.last = Some(c.clone());
        v.into_iter()
            // Quiet counters cost nothing in the minutes they are zero.
            .filter(|(name, value)| *value > 0.0 || !catalog::metric(name).is_some_and(|m| m.quiet))
            .map(|(metric, value)| Point { metric, value, at })
            .collect()
    }
}

/// The points waiting for CloudWatch, a minute per entry, at most `cap` minutes: when
/// full, the oldest minute goes (counted).
#[derive(Debug)]
pub struct Buffer {
    minutes: VecDeque<Vec<Point>>,
    cap: usize,
    /// Points dropped since the last successful request.
    pub dropped: u64,
    /// Points dropped since natd started.
    pub dropped_total: u64,
}

impl Buffer {
    /// An empty buffer of `cap` minutes.
    pub fn new(cap: usize) -> Self {
        Self {
            minutes: VecDeque::new(),
            cap: cap.max(1),
            dropped: 0,
            dropped_total: 0,
        }
    }

    /// Adds a minute's points, dropping the oldest minute when full.
    pub fn push(&mut self, points: Vec<Point>) {
        if points.is_empty() {
            return;
        }
        while self.minutes.len() >= self.cap {
            let gone = self.minutes.pop_front().map_or(0, |m| m.len() as u64);
            self.dropped += gone;
            self.dropped_total += gone;
        }
        self.minutes.push_back(points);
    }

    /// Points waiting.
    pub fn len(&self) -> usize {
        self.minutes.iter().map(Vec::len).sum()
    }

    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.minutes.is_empty()
    }

    /// The oldest whole minutes that fit in `max` points (at least one minute).
    fn take(&mut self, max: usize) -> Vec<Vec<Point>> {
        let mut out = Vec::new();
        let mut n = 0;
        while let Some(m) = self.minutes.front() {
            if !out.is_empty() && n + m.len() > max {
                break;
            }
            n += m.len();
            out.extend(self.minutes.pop_front());
        }
        out
    }

    /// Puts minutes taken by [`Buffer::take`] back at the front (a request failed).
    fn put_back(&mut self, minutes: Vec<Vec<Point>>) {
        for m in minutes.into_iter().rev() {
            self.minutes.push_front(m);
        }
        while self.minutes.len() > self.cap {
            let gone = self.minutes.pop_front().map_or(0, |m| m.len() as u64);
            self.dropped += gone;
            self.dropped_total += gone;
        }
    }
}

/// The dimension sets each point is published with: the stack, and for a pair member
/// the stack and the instance.
pub fn dimensions(stack: &str, instance: Option<&str>) -> Vec<Vec<Dimension>> {
    let d = |name: &str, value: &str| Dimension::builder().name(name).value(value).build();
    let mut out = vec![vec![d(catalog::STACK_DIMENSION, stack)]];
    if let Some(i) = instance {
        out.push(vec![
            d(catalog::STACK_DIMENSION, stack),
            d(catalog::INSTANCE_DIMENSION, i),
        ]);
    }
    out
}

fn datum(p: &Point, dims: &[Dimension]) -> MetricDatum {
    let unit = catalog::metric(p.metric).map_or("None", |m| m.unit);
    MetricDatum::builder()
        .metric_name(p.metric)
        .set_dimensions(Some(dims.to_vec()))
        .value(p.value)
        .unit(StandardUnit::from(unit))
        .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from(p.at))
        .storage_resolution(catalog::PERIOD_SECS)
        .build()
}

/// The publisher's CloudWatch client: two attempts per request and 10 s at most, not
/// the control plane's five (about 15 s of retries): points that do not go wait in the
/// buffer for the next period instead.
pub fn client(sdk: &aws_config::SdkConfig) -> aws_sdk_cloudwatch::Client {
    let config = aws_sdk_cloudwatch::config::Builder::from(sdk)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(3))
                .build(),
        )
        .build();
    aws_sdk_cloudwatch::Client::from_conf(config)
}

/// The publisher's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The stack.
    pub stack: String,
    /// This instance, when its points also go per instance (a pair member).
    pub instance: Option<String>,
    /// Minutes of points kept while CloudWatch does not take them.
    pub buffer_minutes: usize,
    /// Seconds between points (60; shorter only in tests).
    pub period: Duration,
}

/// Runs the publisher until the agent goes: once a `period`, the minute's points into
/// the buffer, then as much of the buffer as CloudWatch takes.
pub async fn run(
    client: aws_sdk_cloudwatch::Client,
    settings: Settings,
    mut sources: Sources,
    sample: tokio::sync::watch::Receiver<Sample>,
) {
    let mut minutes = Minutes::default();
    let mut buffer = Buffer::new(settings.buffer_minutes);
    let dims = dimensions(&settings.stack, settings.instance.as_deref());
    let mut failing_since: Option<SystemTime> = None;
    let mut tick = tokio::time::interval(settings.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        namespace = catalog::NAMESPACE,
        "publishing metrics to CloudWatch every {:?}", settings.period
    );
    loop {
        tick.tick().await;
        let s = sample.borrow().clone();
        let c = sources.read().await;
        let now = SystemTime::now();
        let mut points = minutes.points(now, &s, &c);
        if buffer.dropped > 0 {
            points.push(Point {
                metric: "PublishDropped",
                value: buffer.dropped as f64,
                at: now,
            });
        }
        buffer.push(points);
        while !buffer.is_empty() {
            let per_point = dims.len();
            let batch = buffer.take(catalog::PUT_MAX_DATUMS / per_point);
            let data: Vec<MetricDatum> = batch
                .iter()
                .flatten()
                .flat_map(|p| dims.iter().map(move |d| datum(p, d)))
                .collect();
            let r = client
                .put_metric_data()
                .namespace(catalog::NAMESPACE)
                .set_metric_data(Some(data))
                .send()
                .await;
            match r {
                Ok(_) => {
                    if let Some(since) = failing_since.take() {
                        info!(
                            "CloudWatch takes metrics again (refused since {}s ago); {} point(s) waited",
                            now.duration_since(since).unwrap_or_default().as_secs(),
                            batch.iter().map(Vec::len).sum::<usize>() + buffer.len()
                        );
                    }
                    if buffer.dropped > 0 {
                        warn!(
                            "{} metric point(s) were dropped while CloudWatch did not answer (buffer of {} minutes full)",
                            buffer.dropped, settings.buffer_minutes
                        );
                        buffer.dropped = 0;
                    }
                }
                Err(e) => {
                    let e = crate::cloud::ApiError::from(e);
                    if failing_since.is_none() {
                        warn!(
                            "cannot publish metrics to CloudWatch ({e}); keeping up to {} minutes of them",
                            settings.buffer_minutes
                        );
                        failing_since = Some(now);
                    }
                    buffer.put_back(batch);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Traffic;

    fn names(p: &[Point]) -> Vec<&str> {
        p.iter().map(|p| p.metric).collect()
    }

    fn value(p: &[Point], name: &str) -> Option<f64> {
        p.iter().find(|p| p.metric == name).map(|p| p.value)
    }

    #[test]
    fn conntrack_statistics_sum_every_cpu() {
        let text = "entries  clashres found new invalid ignore delete delete_list insert insert_failed drop  early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                    00000010  00000000 00000000 00000000 00000003 00000000 00000000 00000000 00000000 0000000a 00000001  00000002 00000000  00000000 00000000 00000000 00000000\n\
                    00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000005 00000000  00000000 00000000  00000000 00000000 00000000 00000000\n";
        assert_eq!(
            parse_conntrack_stats(text),
            Some(ConntrackStats {
                insert_failed: 15,
                dropped: 3
            })
        );
        assert_eq!(parse_conntrack_stats("nonsense\n"), None);
    }

    #[test]
    fn ethtool_statistics_by_name() {
        let text = "NIC statistics:\n     tx_timeout: 0\n     bw_in_allowance_exceeded: 12\n     conntrack_allowance_available: 136812\n";
        let s = parse_ethtool(text);
        assert_eq!(s.get("bw_in_allowance_exceeded"), Some(&12));
        assert_eq!(s.get("conntrack_allowance_available"), Some(&136812));
        assert!(!s.contains_key("NIC statistics"));
    }

    fn counters(out: u64, fail: u64, bw_in: u64) -> Counters {
        Counters {
            traffic: Some(Traffic {
                out_packets: out,
                out_bytes: out * 100,
                back_packets: out * 2,
                back_bytes: out * 1000,
                new_packets: out / 10,
                dropped_packets: 0,
                established: out / 20,
            }),
            conntrack: Some(ConntrackStats {
                insert_failed: fail,
                dropped: 0,
            }),
            ena: [
                ("bw_in_allowance_exceeded".to_string(), bw_in),
                ("conntrack_allowance_available".to_string(), 5000),
            ]
            .into_iter()
            .collect(),
            nat: Some((40, 12)),
            idle_timeouts: fail / 3,
            table: Some((50, 1000)),
        }
    }

    #[test]
    fn a_minute_has_levels_and_the_growth_of_counters_and_quiet_ones_only_when_they_count() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let s = Sample {
            forwarding: Some(true),
            ..Sample::default()
        };
        let mut m = Minutes::default();
        assert!(
            !names(&m.points(at, &Sample::default(), &Counters::default()))
                .contains(&"DataPlaneOk"),
            "nothing said of the data plane before natd checked it"
        );
        let mut m = Minutes::default();
        let first = m.points(at, &s, &counters(100, 7, 3));
        assert_eq!(value(&first, "ActiveConnectionCount"), Some(40.0));
        assert_eq!(value(&first, "ConntrackUsedPercent"), Some(5.0));
        assert_eq!(value(&first, "DataPlaneOk"), Some(1.0));
        assert_eq!(value(&first, "ConntrackAllowanceAvailable"), Some(5000.0));
        assert_eq!(
            value(&first, "BytesOutToDestination"),
            None,
            "no counts before a second reading"
        );
        assert!(!names(&first).contains(&"StandbyReady"), "not a pair");
        let second = m.points(at, &s, &counters(160, 7, 3));
        assert_eq!(value(&second, "PacketsOutToDestination"), Some(60.0));
        assert_eq!(value(&second, "BytesOutToDestination"), Some(6000.0));
        assert_eq!(value(&second, "BytesInFromSource"), Some(6000.0));
        assert_eq!(value(&second, "PacketsInFromDestination"), Some(120.0));
        assert_eq!(value(&second, "BytesOutToSource"), Some(60000.0));
        assert_eq!(value(&second, "ConnectionAttemptCount"), Some(6.0));
        assert_eq!(value(&second, "ConnectionEstablishedCount"), Some(3.0));
        assert_eq!(value(&second, "IdleTimeoutCount"), Some(2.0));
        for quiet in [
            "ErrorPortAllocation",
            "AllowanceExceeded",
            "BwInAllowanceExceeded",
            "PacketsDropCount",
            "FailoverCount",
        ] {
            assert_eq!(
                value(&second, quiet),
                None,
                "{quiet} is zero: not published"
            );
        }
        let third = m.points(at, &s, &counters(160, 9, 10));
        assert_eq!(value(&third, "ErrorPortAllocation"), Some(2.0));
        assert_eq!(value(&third, "IdleTimeoutCount"), Some(3.0));
        assert_eq!(value(&third, "PacketsDropCount"), Some(2.0));
        assert_eq!(value(&third, "BwInAllowanceExceeded"), Some(7.0));
        assert_eq!(value(&third, "AllowanceExceeded"), Some(7.0));
        // A chain rebuilt: its counters start again from zero.
        let fourth = m.points(at, &s, &counters(20, 9, 10));
        assert_eq!(value(&fourth, "PacketsOutToDestination"), Some(20.0));
    }

    #[test]
    fn a_failover_is_counted_once_with_its_gap_and_not_again_after_a_restart() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let took = at - Duration::from_secs(30);
        let s = Sample {
            standby_ready: Some(false),
            takeover: Some((took, Some(900))),
            ..Sample::default()
        };
        // natd restarted after the takeover: not counted.
        let mut m = Minutes::default();
        let p = m.points(at, &s, &Counters::default());
        assert_eq!(value(&p, "FailoverCount"), None);
        assert_eq!(value(&p, "StandbyReady"), Some(0.0));
        // A running natd takes over: counted once.
        let later = at + Duration::from_secs(60);
        let s2 = Sample {
            takeover: Some((later, Some(1200))),
            ..s.clone()
        };
        let p = m.points(later, &s2, &Counters::default());
        assert_eq!(value(&p, "FailoverCount"), Some(1.0));
        assert_eq!(value(&p, "FailoverGapMilliseconds"), Some(1200.0));
        let p = m.points(later, &s2, &Counters::default());
        assert_eq!(value(&p, "FailoverCount"), None);
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_minutes_and_counts_them() {
        let at = SystemTime::UNIX_EPOCH;
        let minute = |v: f64| {
            vec![
                Point {
                    metric: "DataPlaneOk",
                    value: v,
                    at,
                };
                3
            ]
        };
        let mut b = Buffer::new(2);
        b.push(minute(1.0));
        b.push(minute(2.0));
        b.push(minute(3.0));
        assert_eq!((b.len(), b.dropped), (6, 3));
        let taken = b.take(4);
        assert_eq!(taken.len(), 1, "whole minutes that fit");
        assert_eq!(taken[0][0].value, 2.0, "oldest kept first");
        b.put_back(taken);
        assert_eq!(b.len(), 6);
        let all = b.take(1000);
        assert_eq!(all.len(), 2);
        assert!(b.is_empty());
    }

    #[test]
    fn a_pair_member_publishes_per_stack_and_per_instance() {
        assert_eq!(dimensions("dev", None).len(), 1);
        let d = dimensions("dev", Some("i-1"));
        assert_eq!(d.len(), 2);
        assert_eq!(d[1][1].name(), Some("InstanceId"));
    }
}
