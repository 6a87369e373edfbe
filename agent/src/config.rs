//! natd's configuration file (TOML). Every key is optional; unknown keys are rejected
//! so that a typo cannot silently fall back to a default.

use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where natd reads its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = crate::contract::boot::PATH;

/// Errors reading the configuration. All of them are permanent: exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file exists but could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key and line.
        message: String,
    },
    /// A value parsed but makes no sense.
    #[error("invalid config {path}: {key} = {value}: {why}")]
    Value {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// The bad value as written.
        value: String,
        /// What is wrong with it.
        why: String,
    },
}

/// Bounds of the numeric keys: `(key, least, most, unit)`. Upper bounds keep a typo (an
/// extra zero) from silently switching self-healing off: a 500 s interval would leave a
/// broken NAT in place for most of an hour before its group replaced it.
pub const BOUNDS: &[(&str, u64, u64, &str)] = &[
    ("interval_secs", 1, 60, "seconds"),
    ("unhealthy_after", 1, 20, "passes"),
    ("probe_timeout_ms", 100, 10_000, "milliseconds"),
    ("startup_attempts", 1, 60, "attempts"),
    ("control_deadline_secs", 5, 300, "seconds"),
    ("control_backoff_max_secs", 1, 600, "seconds"),
    ("drift_check_secs", 1, 600, "seconds"),
    ("conntrack_max", 1024, 67_108_864, "entries"),
    (
        "egress_ips",
        1,
        crate::contract::boot::EGRESS_IPS_MAX as u64,
        "addresses",
    ),
    ("heartbeat_interval_ms", 20, 1000, "milliseconds"),
    ("heartbeat_misses", 2, 50, "beats"),
    ("consistency_window_ms", 0, 60_000, "milliseconds"),
    ("cloudwatch_period_secs", 1, 60, "seconds"),
    ("cloudwatch_buffer_minutes", 1, 1440, "minutes"),
];

/// The whole configuration, with defaults filled in.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Stack name: natd takes over route tables (and an Elastic IP) tagged
    /// `natd:egress=<stack>`.
    pub stack: String,
    /// Route tables to take over besides the tagged ones, by id: a template
    /// (CloudFormation, CDK) names the tables it cannot tag.
    pub route_tables: Vec<String>,
    /// Seconds between reconcile passes.
    pub interval_secs: u64,
    /// Consecutive failed passes (after repair was tried) before natd reports the
    /// instance unhealthy to its Auto Scaling group.
    pub unhealthy_after: u32,
    /// Elastic IP allocation to hold. Without it natd looks for an address tagged
    /// `natd:egress=<stack>`; with neither, the instance keeps its own public IP.
    pub eip_allocation_id: Option<String>,
    /// Optional data-plane probes: `IPV4:PORT` targets natd connects to over TCP, bound
    /// to the egress interface, each pass. Use endpoints you own. Addresses only, no
    /// names: a resolver hiccup is not a NAT failure, and must not get a forwarding
    /// instance replaced. The data plane fails when every target fails in a pass.
    pub probe_targets: Vec<String>,
    /// Timeout for one probe connection, milliseconds.
    pub probe_timeout_ms: u64,
    /// IMDS base URI. Default: the SDK's (169.254.169.254, or
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`).
    pub imds_endpoint: Option<String>,
    /// AWS endpoint override for every service (also `AWS_ENDPOINT_URL`).
    pub aws_endpoint_url: Option<String>,
    /// Where the sysctl tree is mounted.
    pub proc_sys_root: PathBuf,
    /// Override of the conntrack table size; default is derived from memory.
    pub conntrack_max: Option<u64>,
    /// Ephemeral port range for masqueraded connections, "LOW HIGH".
    pub local_port_range: String,
    /// How many times to try IMDS and the first AWS calls at start before giving up
    /// (exit 1, systemd restarts natd).
    pub startup_attempts: u32,
    /// Longest a control pass (IMDS, EC2, Auto Scaling) may take before it is abandoned
    /// and retried; the kernel checks run every interval regardless.
    pub control_deadline_secs: u64,
    /// Longest wait between control passes while AWS cannot be reached (the wait
    /// doubles from `interval_secs` up to this).
    pub control_backoff_max_secs: u64,
    /// How often the control pass reads EC2 and Auto Scaling in steady state (±20 %
    /// jitter; IMDS is read at every pass): drift made
    /// outside natd (a route, the source/dest check, an address moved by hand) is found
    /// and repaired within this (plus the jitter). Until natd is settled (starting, its
    /// launch action not completed, a takeover just made, a pair without a peer or
    /// heartbeats, the data plane's verdict changed, an Unhealthy report due) it runs
    /// every `interval_secs`. EC2 throttles Describe calls per account and region, so
    /// a fleet of natd instances polling every few seconds starves every other tool.
    pub drift_check_secs: u64,
    /// Where natd writes its metrics in Prometheus text format, every pass (atomically,
    /// mode 0644; node_exporter's textfile collector reads it). Off when absent.
    pub metrics_file: Option<PathBuf>,
    /// Publish natd's metrics to CloudWatch (namespace `natd`, one point a minute per
    /// metric; see `natd_contract::metrics`). natctl turns it on in the boot
    /// configuration.
    pub cloudwatch_metrics: bool,
    /// Seconds between published points (60: CloudWatch's standard resolution).
    pub cloudwatch_period_secs: u64,
    /// While CloudWatch does not take the points, how many minutes of them natd keeps
    /// (then it drops the oldest, and counts them in `PublishDropped`).
    pub cloudwatch_buffer_minutes: u64,
    /// The ENA driver's statistics are read with `ethtool -S IFACE`; with this set,
    /// from this file instead (the same format).
    pub ena_stats_file: Option<PathBuf>,
    /// Whether natd publishes its health in the `natd:health` tag of its instance, which
    /// `natctl status` reads.
    pub publish_health: bool,
    /// Hot standby: this instance is one of a pair (two Auto Scaling groups of one). The
    /// holder of the stack's Elastic IPs (on secondary private addresses of its ENI)
    /// SNATs to those addresses and holds the routes; the other keeps a copy of its
    /// connection state (conntrackd) and takes everything over when the holder stops
    /// forwarding. See `natd::pair`.
    pub pair: bool,
    /// Pair mode: how many egress addresses (secondary private IPs, each with one of the
    /// stack's Elastic IPs) natctl allocated; natd SNATs across every Elastic IP tagged
    /// for the stack and warns when fewer than this are.
    pub egress_ips: u32,
    /// A single instance whose egress is the stack's Elastic IP (natctl sets it with
    /// `--eip`; implied by `eip_allocation_id`): new connections are forwarded only
    /// while the address is on the instance's ENI, so none leaves by another public
    /// address. A pair always behaves so.
    pub require_eip: bool,
    /// Pair mode: UDP port of the heartbeats between the pair.
    pub heartbeat_port: u16,
    /// Pair mode: milliseconds between heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Pair mode: heartbeats missed before the standby checks whether the holder still
    /// forwards (and takes over only if it does not).
    pub heartbeat_misses: u32,
    /// Pair mode: how late EC2's reads may show a change (its API is eventually
    /// consistent). A read made within this long of a move it contradicts — our own
    /// takeover, or the peer heard claiming the address — is not believed, and the holder
    /// waits this long before taking back a route it finds on the peer.
    pub consistency_window_ms: u64,
    /// Pair mode: UDP port of conntrackd's state sync.
    pub sync_port: u16,
    /// Pair mode: UDP port of the VXLAN link the standby checks the holder's forwarding
    /// through.
    pub overlay_port: u16,
    /// Pair mode: the conntrackd binary (conntrack-tools).
    pub conntrackd: PathBuf,
    /// Pair mode: where natd keeps conntrackd's configuration, socket and log.
    pub state_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            stack: crate::contract::DEFAULT_STACK.to_string(),
            route_tables: Vec::new(),
            interval_secs: 5,
            unhealthy_after: 3,
            eip_allocation_id: None,
            probe_targets: Vec::new(),
            probe_timeout_ms: 2000,
            imds_endpoint: None,
            aws_endpoint_url: None,
            proc_sys_root: PathBuf::from("/proc/sys"),
            conntrack_max: None,
            // The widest range that stays clear of privileged ports: 64k source ports
            // per destination before port exhaustion.
            local_port_range: "1024 65535".to_string(),
            // With the backoff in `retry` (0.5 s doubling, capped at 10 s) this is
            // about 2 minutes.
            startup_attempts: 16,
            control_deadline_secs: 30,
            control_backoff_max_secs: 60,
            drift_check_secs: 60,
            metrics_file: None,
            cloudwatch_metrics: false,
            cloudwatch_period_secs: 60,
            cloudwatch_buffer_minutes: 60,
            ena_stats_file: None,
            publish_health: true,
            pair: false,
            egress_ips: 1,
            require_eip: false,
            heartbeat_port: crate::contract::pair::HEARTBEAT_PORT,
            heartbeat_interval_ms: 100,
            heartbeat_misses: 3,
            consistency_window_ms: 5000,
            sync_port: crate::contract::pair::SYNC_PORT,
            overlay_port: crate::contract::pair::OVERLAY_PORT,
            conntrackd: PathBuf::from("conntrackd"),
            state_dir: PathBuf::from("/run/natd"),
        }
    }
}

impl Config {
    /// The part of the configuration natctl writes at boot.
    pub fn boot(&self) -> crate::contract::boot::BootConfig {
        crate::contract::boot::BootConfig {
            stack: self.stack.clone(),
            route_tables: self.route_tables.clone(),
            pair: self.pair,
            egress_ips: self.pair.then_some(self.egress_ips),
            require_eip: self.require_eip,
            cloudwatch_metrics: self.cloudwatch_metrics,
        }
    }

    /// Reads `path`. A missing file at the default path means "all defaults"; a missing
    /// file named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => String::new(),
            Err(source) => {
                return Err(Error::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let cfg: Config = toml::from_str(text).map_err(|e| Error::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), Error> {
        let bad = |key, value: String, why: String| Error::Value {
            path: path.to_owned(),
            key,
            value,
            why,
        };
        // What natctl writes at boot follows the contract's rules, checked here as there.
        if let Err(e) = self.boot().validate() {
            return Err(bad(e.key, e.value, e.why));
        }
        let numbers = [
            ("interval_secs", Some(self.interval_secs)),
            ("unhealthy_after", Some(u64::from(self.unhealthy_after))),
            ("probe_timeout_ms", Some(self.probe_timeout_ms)),
            ("startup_attempts", Some(u64::from(self.startup_attempts))),
            ("control_deadline_secs", Some(self.control_deadline_secs)),
            (
                "control_backoff_max_secs",
                Some(self.control_backoff_max_secs),
            ),
            ("drift_check_secs", Some(self.drift_check_secs)),
            ("conntrack_max", self.conntrack_max),
            ("egress_ips", Some(u64::from(self.egress_ips))),
            ("heartbeat_interval_ms", Some(self.heartbeat_interval_ms)),
            ("heartbeat_misses", Some(u64::from(self.heartbeat_misses))),
            ("consistency_window_ms", Some(self.consistency_window_ms)),
            ("cloudwatch_period_secs", Some(self.cloudwatch_period_secs)),
            (
                "cloudwatch_buffer_minutes",
                Some(self.cloudwatch_buffer_minutes),
            ),
        ];
        for (key, value) in numbers {
            let Some(value) = value else { continue };
            if let Some((_, least, most, unit)) = BOUNDS.iter().find(|b| b.0 == key)
                && !(*least..=*most).contains(&value)
            {
                return Err(bad(
                    key,
                    value.to_string(),
                    format!("must be between {least} and {most} ({unit})"),
                ));
            }
        }
        if !self.probe_targets.is_empty() && self.probe_timeout_ms >= self.interval_secs * 1000 {
            return Err(bad(
                "probe_timeout_ms",
                self.probe_timeout_ms.to_string(),
                format!(
                    "must be shorter than interval_secs ({} s): a probe must end within its pass",
                    self.interval_secs
                ),
            ));
        }
        if self.drift_check_secs < self.interval_secs {
            return Err(bad(
                "drift_check_secs",
                self.drift_check_secs.to_string(),
                format!("must be at least interval_secs ({} s)", self.interval_secs),
            ));
        }
        if self.control_backoff_max_secs < self.interval_secs {
            return Err(bad(
                "control_backoff_max_secs",
                self.control_backoff_max_secs.to_string(),
                format!("must be at least interval_secs ({} s)", self.interval_secs),
            ));
        }
        if let Some(id) = &self.eip_allocation_id
            && !(id.starts_with("eipalloc-")
                && id.len() > "eipalloc-".len()
                && id["eipalloc-".len()..]
                    .chars()
                    .all(|c| c.is_ascii_hexdigit()))
        {
            return Err(bad(
                "eip_allocation_id",
                format!("{id:?}"),
                "an allocation id looks like eipalloc-0123abcd".into(),
            ));
        }
        for t in &self.probe_targets {
            if let Err(why) = parse_probe_target(t) {
                return Err(bad("probe_targets", format!("{t:?}"), why));
            }
        }
        if crate::kernel::parse_port_range(&self.local_port_range).is_none() {
            return Err(bad(
                "local_port_range",
                format!("{:?}", self.local_port_range),
                "expected \"LOW HIGH\" with 1024 <= LOW < HIGH <= 65535".into(),
            ));
        }
        let ports = [
            ("heartbeat_port", self.heartbeat_port),
            ("sync_port", self.sync_port),
            ("overlay_port", self.overlay_port),
        ];
        for (i, (key, port)) in ports.iter().enumerate() {
            if *port == 0 {
                return Err(bad(
                    key,
                    "0".into(),
                    "must be a UDP port, 1 to 65535".into(),
                ));
            }
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                return Err(bad(
                    key,
                    port.to_string(),
                    format!(
                        "already used by {other}: the pair's three channels need their own ports"
                    ),
                ));
            }
        }
        if self.pair && self.eip_allocation_id.is_some() {
            return Err(bad(
                "eip_allocation_id",
                format!("{:?}", self.eip_allocation_id.as_deref().unwrap_or_default()),
                "a pair holds the Elastic IPs tagged natd:egress=<stack> (egress_ips of them); leave eip_allocation_id out".into(),
            ));
        }
        if !self.state_dir.is_absolute() {
            return Err(bad(
                "state_dir",
                format!("{:?}", self.state_dir.display().to_string()),
                "must be an absolute directory, e.g. /run/natd".into(),
            ));
        }
        if let Some(p) = &self.metrics_file
            && (!p.is_absolute() || p.file_name().is_none())
        {
            return Err(bad(
                "metrics_file",
                format!("{:?}", p.display().to_string()),
                "must be an absolute path to a file, e.g. /run/natd/metrics.prom".into(),
            ));
        }
        Ok(())
    }

    /// The probe targets, parsed (validated at load, so none is dropped).
    pub fn probes(&self) -> Vec<SocketAddrV4> {
        self.probe_targets
            .iter()
            .filter_map(|t| parse_probe_target(t).ok())
            .collect()
    }

    /// The longest a control pass may take.
    pub fn control_deadline(&self) -> Duration {
        Duration::from_secs(self.control_deadline_secs)
    }

    /// The longest wait between control passes while AWS cannot be reached.
    pub fn control_backoff_max(&self) -> Duration {
        Duration::from_secs(self.control_backoff_max_secs)
    }

    /// The steady-state wait between control passes.
    pub fn drift_check(&self) -> Duration {
        Duration::from_secs(self.drift_check_secs)
    }

    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// Pair mode: how late EC2's reads may show a change.
    pub fn consistency_window(&self) -> Duration {
        Duration::from_millis(self.consistency_window_ms)
    }

    /// The reconcile interval.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }
}

/// Parses one probe target, `IPV4:PORT`, or says what is wrong with it.
pub fn parse_probe_target(t: &str) -> Result<SocketAddrV4, String> {
    let Some((host, port)) = t.rsplit_once(':') else {
        return Err("expected IPV4:PORT, e.g. 192.0.2.10:443".into());
    };
    if t.contains("://") || t.contains('/') {
        return Err("expected IPV4:PORT, not a URL".into());
    }
    let port: u16 = match port.parse() {
        Ok(0) | Err(_) => return Err(format!("port {port:?} must be a number from 1 to 65535")),
        Ok(p) => p,
    };
    let ip: Ipv4Addr = host.parse().map_err(|_| {
        if host.starts_with('[') || host.contains(':') {
            format!("{host:?} is not an IPv4 address (natd probes IPv4 egress)")
        } else {
            format!(
                "{host:?} is not an IPv4 address; names are not allowed (a resolver hiccup must not count as a NAT failure)"
            )
        }
    })?;
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(format!("{ip} cannot be connected to"));
    }
    Ok(SocketAddrV4::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, Error> {
        Config::parse(t, Path::new("natd.toml"))
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").expect("parses"), Config::default());
    }

    #[test]
    fn what_natctl_writes_at_boot_natd_reads_as_written() {
        use crate::contract::boot::BootConfig;
        for b in [
            BootConfig::single("dev", false),
            BootConfig::single("dev", true),
            BootConfig::pair("ha", 3),
            BootConfig::single("cfn", true).with_route_tables(["rtb-1234abcd".to_string()]),
        ] {
            let cfg = parse(&b.to_toml()).expect("natd reads it");
            assert_eq!(cfg.boot(), b);
        }
        // And what the contract refuses, natd refuses, naming the key.
        let e = parse(&BootConfig::pair("ha", 33).to_toml()).expect_err("refused");
        assert!(e.to_string().contains("egress_ips = 33"), "{e}");
        let e = parse("stack = \"cfn\"\nroute_tables = [\"rtb-nothex!\"]\n").expect_err("refused");
        assert!(e.to_string().contains("rtb-nothex!"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("stack = \"a\"\nintervall_secs = 3\n").expect_err("rejected");
        assert!(e.to_string().contains("intervall_secs"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        for (text, needle) in [
            ("stack = \"a b\"", "stack"),
            ("interval_secs = 0", "interval_secs"),
            ("eip_allocation_id = \"1.2.3.4\"", "1.2.3.4"),
            ("probe_targets = [\"example.com\"]", "example.com"),
            ("local_port_range = \"80 70\"", "80 70"),
            ("interval_secs = \"five\"", "five"),
            ("interval_secs = 500", "interval_secs"),
            ("interval_secs = 61", "between 1 and 60"),
            ("unhealthy_after = 0", "unhealthy_after"),
            ("unhealthy_after = 200", "unhealthy_after"),
            ("probe_timeout_ms = 20000", "probe_timeout_ms"),
            (
                "interval_secs = 1\nprobe_timeout_ms = 1500\nprobe_targets = [\"192.0.2.1:80\"]",
                "shorter than interval_secs",
            ),
            ("startup_attempts = 1000", "startup_attempts"),
            ("control_deadline_secs = 3000", "control_deadline_secs"),
            ("control_backoff_max_secs = 0", "control_backoff_max_secs"),
            ("drift_check_secs = 0", "drift_check_secs"),
            ("drift_check_secs = 601", "drift_check_secs"),
            (
                "interval_secs = 10\ndrift_check_secs = 5",
                "drift_check_secs",
            ),
            (
                "interval_secs = 30\ncontrol_backoff_max_secs = 10",
                "at least interval_secs",
            ),
            ("conntrack_max = 10", "conntrack_max"),
            ("metrics_file = \"metrics.prom\"", "metrics_file"),
            ("eip_allocation_id = \"eipalloc-\"", "eipalloc-"),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn probe_targets_are_ipv4_and_port() {
        for good in ["192.0.2.10:443", "127.0.0.1:9", "10.0.0.1:65535"] {
            assert!(parse_probe_target(good).is_ok(), "{good}");
            parse(&format!("probe_targets = [\"{good}\"]")).expect(good);
        }
        for (bad, why) in [
            ("http://host:80", "URL"),
            ("name with spaces:80", "not an IPv4 address"),
            ("example.com:443", "names are not allowed"),
            ("host:0", "port"),
            ("192.0.2.1:0", "port"),
            ("192.0.2.1:65536", "port"),
            ("192.0.2.1", "IPV4:PORT"),
            ("192.0.2.1:", "port"),
            (":80", "not an IPv4 address"),
            ("[2001:db8::1]:443", "not an IPv4 address"),
            ("0.0.0.0:80", "cannot be connected to"),
            ("224.0.0.1:80", "cannot be connected to"),
        ] {
            let e = parse_probe_target(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
            let e = parse(&format!("probe_targets = [\"{bad}\"]")).expect_err(bad);
            let msg = e.to_string();
            assert!(
                msg.contains("probe_targets") && msg.contains(bad),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn every_bound_is_enforced_at_both_ends() {
        for (key, least, most, _) in BOUNDS {
            // A bound of 0 has nothing below it.
            for v in [least.checked_sub(1), Some(most + 1)].into_iter().flatten() {
                if *key == "interval_secs" {
                    continue;
                }
                // Keep the cross-key rules satisfied while probing one key.
                let text = format!("interval_secs = 60\n{key} = {v}\n");
                let e = parse(&text).expect_err(&text);
                assert!(e.to_string().contains(key), "{text}: {e}");
            }
            if *key != "interval_secs" {
                let text = format!("interval_secs = 60\n{key} = {most}\n");
                parse(&text).expect(&text);
            }
        }
    }

    #[test]
    fn shipped_example_is_valid() {
        let text = include_str!("../natd.example.toml");
        let cfg = parse(text).expect("example parses");
        assert_eq!(cfg.stack, "default");
    }
}
