//! natd's configuration file (TOML). Every key is optional; unknown keys are rejected
//! so that a typo cannot silently fall back to a default.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where natd reads its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/natd/natd.toml";

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
        why: &'static str,
    },
}

/// The whole configuration, with defaults filled in.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Stack name: natd takes over route tables (and an Elastic IP) tagged
    /// `natd:egress=<stack>`.
    pub stack: String,
    /// Seconds between reconcile passes.
    pub interval_secs: u64,
    /// Consecutive failed passes (after repair was tried) before natd reports the
    /// instance unhealthy to its Auto Scaling group.
    pub unhealthy_after: u32,
    /// Elastic IP allocation to hold. Without it natd looks for an address tagged
    /// `natd:egress=<stack>`; with neither, the instance keeps its own public IP.
    pub eip_allocation_id: Option<String>,
    /// Optional data-plane probes: `host:port` targets natd connects to over TCP,
    /// bound to the egress interface, each pass. Use endpoints you own.
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            stack: crate::contract::DEFAULT_STACK.to_string(),
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
        }
    }
}

impl Config {
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
        let bad = |key, value: String, why| Error::Value {
            path: path.to_owned(),
            key,
            value,
            why,
        };
        if let Err(e) = crate::contract::check_stack_name(&self.stack) {
            return Err(bad("stack", format!("{:?}", self.stack), e.why));
        }
        if self.interval_secs == 0 {
            return Err(bad("interval_secs", "0".into(), "must be at least 1"));
        }
        if self.unhealthy_after == 0 {
            return Err(bad("unhealthy_after", "0".into(), "must be at least 1"));
        }
        if self.startup_attempts == 0 {
            return Err(bad("startup_attempts", "0".into(), "must be at least 1"));
        }
        if let Some(id) = &self.eip_allocation_id
            && !id.starts_with("eipalloc-")
        {
            return Err(bad(
                "eip_allocation_id",
                format!("{id:?}"),
                "an allocation id looks like eipalloc-0123abcd",
            ));
        }
        for t in &self.probe_targets {
            if t.rsplit_once(':')
                .and_then(|(h, p)| (!h.is_empty()).then_some(p))
                .and_then(|p| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(bad("probe_targets", format!("{t:?}"), "expected host:port"));
            }
        }
        if crate::kernel::parse_port_range(&self.local_port_range).is_none() {
            return Err(bad(
                "local_port_range",
                format!("{:?}", self.local_port_range),
                "expected \"LOW HIGH\" with 1024 <= LOW < HIGH <= 65535",
            ));
        }
        Ok(())
    }

    /// The reconcile interval.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }
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
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn shipped_example_is_valid() {
        let text = include_str!("../natd.example.toml");
        let cfg = parse(text).expect("example parses");
        assert_eq!(cfg.stack, "default");
    }
}
