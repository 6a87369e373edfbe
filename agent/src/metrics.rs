//! natd's metrics, as a file in Prometheus text format.
//!
//! A file rather than an HTTP endpoint: a NAT instance forwards the VPC's traffic and
//! should listen on nothing; node_exporter's textfile collector (or the CloudWatch agent's
//! Prometheus scraper, or `cat`) reads the file without natd opening a port, and it costs
//! nothing when nobody reads it. Written atomically (a temporary file renamed over the
//! old one), mode 0644: the numbers are not secret, and the reader is usually another
//! user. Off unless `metrics_file` is set; the shipped configuration sets
//! `/run/natd/metrics.prom`.

use prometheus::{Encoder, IntGauge, Registry, TextEncoder};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// The numbers one pass exposes. `None`: not known (yet), the metric is left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Conntrack entries in use.
    pub conntrack_entries: Option<i64>,
    /// Conntrack table size.
    pub conntrack_max: Option<i64>,
    /// Masqueraded connections tracked.
    pub nat_connections: Option<i64>,
    /// Connections to the busiest single destination (what exhausts source ports).
    pub nat_busiest_destination: Option<i64>,
    /// Source ports available per destination (size of the local port range).
    pub nat_ports_per_destination: i64,
    /// The data plane forwards.
    pub forwarding: bool,
    /// Consecutive failed data-plane passes.
    pub data_failures: i64,
    /// The last control pass reached AWS.
    pub control_ok: bool,
    /// Consecutive failed control passes.
    pub control_failures: i64,
    /// Failed AWS or IMDS calls since natd started.
    pub control_errors_total: i64,
    /// When a control pass last succeeded (Unix seconds).
    pub control_last_success: Option<i64>,
    /// Route tables whose default route targets this instance.
    pub routes_held: Option<i64>,
    /// Route tables a newer natd holds.
    pub routes_yielded: Option<i64>,
    /// When natd last took a route over from another target (Unix seconds).
    pub last_takeover: Option<i64>,
    /// VPC CIDR blocks natd masquerades.
    pub vpc_cidrs: i64,
    /// natd reported this instance Unhealthy.
    pub unhealthy_reported: bool,
    /// Pair mode, on the standby: how far its copy of the holder's connections is
    /// behind (entries, seconds), when known.
    pub pair_sync_lag: Option<(i64, i64)>,
}

/// Every metric: name, help, value.
fn rows(s: &Snapshot) -> Vec<(&'static str, &'static str, Option<i64>)> {
    vec![
        (
            "natd_conntrack_entries",
            "Connection-tracking entries in use.",
            s.conntrack_entries,
        ),
        (
            "natd_conntrack_max",
            "Connection-tracking table size (nf_conntrack_max).",
            s.conntrack_max,
        ),
        (
            "natd_nat_connections",
            "Masqueraded connections tracked.",
            s.nat_connections,
        ),
        (
            "natd_nat_busiest_destination_connections",
            "Masqueraded connections to the busiest single destination (protocol, address, port): source ports run out here first.",
            s.nat_busiest_destination,
        ),
        (
            "natd_nat_ports_per_destination",
            "Source ports available per destination (ip_local_port_range).",
            Some(s.nat_ports_per_destination),
        ),
        (
            "natd_forwarding",
            "1 when the last data-plane pass found the instance forwarding.",
            Some(i64::from(s.forwarding)),
        ),
        (
            "natd_data_plane_failures",
            "Consecutive failed data-plane passes (these count towards Unhealthy).",
            Some(s.data_failures),
        ),
        (
            "natd_control_plane_ok",
            "1 when the last control pass reached AWS and IMDS.",
            Some(i64::from(s.control_ok)),
        ),
        (
            "natd_control_plane_failures",
            "Consecutive failed control passes (never counted towards Unhealthy).",
            Some(s.control_failures),
        ),
        (
            "natd_control_plane_errors_total",
            "Failed AWS or IMDS calls since natd started.",
            Some(s.control_errors_total),
        ),
        (
            "natd_control_plane_last_success_timestamp_seconds",
            "When a control pass last succeeded.",
            s.control_last_success,
        ),
        (
            "natd_routes_held",
            "Route tables whose default route targets this instance.",
            s.routes_held,
        ),
        (
            "natd_routes_yielded",
            "Tagged route tables a newer natd holds.",
            s.routes_yielded,
        ),
        (
            "natd_last_takeover_timestamp_seconds",
            "When natd last took a default route over from another target (a failover).",
            s.last_takeover,
        ),
        (
            "natd_vpc_cidr_blocks",
            "VPC CIDR blocks natd masquerades.",
            Some(s.vpc_cidrs),
        ),
        (
            "natd_unhealthy_reported",
            "1 when natd has reported this instance Unhealthy to its group.",
            Some(i64::from(s.unhealthy_reported)),
        ),
        (
            "natd_pair_sync_behind_entries",
            "Pair mode, on the standby: connections the holder tracks that its copy lacks (0 in step); the connections a failover now would reset.",
            s.pair_sync_lag.map(|l| l.0),
        ),
        (
            "natd_pair_sync_behind_seconds",
            "Pair mode, on the standby: how long its copy has been behind the holder's table (0 in step).",
            s.pair_sync_lag.map(|l| l.1),
        ),
    ]
}

/// Renders `s` in Prometheus text format.
pub fn render(s: &Snapshot) -> Result<String, prometheus::Error> {
    let registry = Registry::new();
    for (name, help, value) in rows(s) {
        let Some(value) = value else { continue };
        let g = IntGauge::new(name, help)?;
        g.set(value);
        registry.register(Box::new(g))?;
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Where the metrics go.
#[derive(Debug, Clone)]
pub struct Metrics {
    path: PathBuf,
}

impl Metrics {
    /// Metrics written to `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Writes `s`, atomically.
    pub fn write(&self, s: &Snapshot) -> std::io::Result<()> {
        let text = render(s).map_err(std::io::Error::other)?;
        let dir = self
            .path
            .parent()
            .ok_or_else(|| std::io::Error::other("metrics_file has no directory"))?;
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(text.as_bytes())?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_known_values_only() {
        let s = Snapshot {
            conntrack_entries: Some(12),
            conntrack_max: Some(65536),
            nat_ports_per_destination: 64512,
            forwarding: true,
            control_failures: 3,
            control_errors_total: 7,
            vpc_cidrs: 2,
            ..Snapshot::default()
        };
        let text = render(&s).expect("render");
        assert!(text.contains("# TYPE natd_conntrack_entries gauge\nnatd_conntrack_entries 12\n"));
        assert!(text.contains("natd_forwarding 1\n"), "{text}");
        assert!(text.contains("natd_control_plane_ok 0\n"), "{text}");
        assert!(text.contains("natd_control_plane_failures 3\n"), "{text}");
        assert!(
            text.contains("natd_nat_ports_per_destination 64512\n"),
            "{text}"
        );
        assert!(
            !text.contains("natd_routes_held"),
            "unknown is left out: {text}"
        );
        assert!(!text.contains("natd_pair_sync_behind"), "{text}");
        let standby = render(&Snapshot {
            pair_sync_lag: Some((1200, 45)),
            ..Snapshot::default()
        })
        .expect("render");
        assert!(
            standby.contains("natd_pair_sync_behind_entries 1200\n"),
            "{standby}"
        );
        assert!(
            standby.contains("natd_pair_sync_behind_seconds 45\n"),
            "{standby}"
        );
    }

    #[test]
    fn written_atomically_and_readable_by_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/metrics.prom");
        let m = Metrics::new(path.clone());
        m.write(&Snapshot::default()).expect("write");
        m.write(&Snapshot {
            routes_held: Some(2),
            ..Snapshot::default()
        })
        .expect("rewrite");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("natd_routes_held 2"), "{text}");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(
            std::fs::read_dir(path.parent().expect("dir"))
                .expect("ls")
                .count(),
            1,
            "no temporary file left"
        );
    }
}
