//! The thin part that reads and writes the real kernel: /proc/sys, netlink,
//! iptables-save and iptables-restore. It decides nothing; see the parent module.

use super::{Facts, NatUse, Ruleset, Sysctl, hook_drift, nat_use_within, observe, restore_input};
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Seconds iptables waits for the xtables lock held by other software before failing.
const XTABLES_WAIT_SECS: &str = "5";

/// Kernel adapter errors, named after the failed operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a sysctl failed.
    #[error("cannot read sysctl {key}: {source}")]
    ReadSysctl {
        /// Key below /proc/sys.
        key: String,
        /// Why.
        source: std::io::Error,
    },
    /// Writing a sysctl failed.
    #[error("cannot set sysctl {key} = {value}: {source}")]
    WriteSysctl {
        /// Key below /proc/sys.
        key: String,
        /// Value natd tried to write.
        value: String,
        /// Why.
        source: std::io::Error,
    },
    /// A sysctl read back a different value after it was written.
    #[error("sysctl {key} reads {found:?} after writing {value:?}")]
    SysctlDidNotStick {
        /// Key below /proc/sys.
        key: String,
        /// Value written.
        value: String,
        /// Value read back.
        found: String,
    },
    /// A command could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The program.
        command: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The program.
        command: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// After iptables-restore, iptables-save still differs from natd's ruleset.
    #[error("natd's iptables chains differ from the ruleset after applying it:\n{remaining}")]
    RulesetDidNotStick {
        /// The restore input that would still be needed.
        remaining: String,
    },
    /// No interface carries the ENI's MAC address.
    #[error("no network interface has MAC address {mac} (the kernel lists: {seen})")]
    NoInterface {
        /// The MAC from IMDS.
        mac: String,
        /// The interfaces and MACs the kernel listed.
        seen: String,
    },
    /// /proc/meminfo could not be read or has no MemTotal.
    #[error("cannot read MemTotal from /proc/meminfo: {0}")]
    Meminfo(String),
}

/// What one pass changed in the kernel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Sysctls that had another value and were set, as `key=value`.
    pub sysctls: Vec<String>,
    /// The iptables-restore input applied, when natd's chains were missing or differed.
    pub ruleset: Option<String>,
    /// Optional settings the kernel refused (e.g. conntrack size inside a container).
    pub skipped: Vec<String>,
    /// What was wrong with natd's jumps (missing, doubled, below other rules), when the
    /// ruleset was applied because of them.
    pub hooks: Vec<String>,
}

impl Changes {
    /// Whether the kernel had drifted from what natd wants.
    pub fn any(&self) -> bool {
        !self.sysctls.is_empty() || self.ruleset.is_some()
    }
}

/// Memory of this machine in kB.
pub fn mem_total_kb() -> Result<u64, Error> {
    let text =
        std::fs::read_to_string("/proc/meminfo").map_err(|e| Error::Meminfo(e.to_string()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Meminfo("no MemTotal line".into()))
}

/// The Linux interface whose MAC address is `mac` (case-insensitive), asked of the
/// kernel over netlink (getifaddrs). Not /sys/class/net: sysfs shows the interfaces of
/// the network namespace that mounted it, which in a container or a sandboxed unit
/// need not be natd's.
pub fn interface_with_mac(mac: &str) -> Result<String, Error> {
    let links = nix::ifaddrs::getifaddrs()
        .map(|all| {
            all.filter_map(|a| {
                let link = a.address?.as_link_addr()?.addr()?;
                let mac = link
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                Some((a.interface_name, mac))
            })
            .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    with_mac(&links, mac)
}

/// The interface of `links` (name, MAC) whose MAC is `mac`, case-insensitively.
fn with_mac(links: &[(String, String)], mac: &str) -> Result<String, Error> {
    links
        .iter()
        .find(|(_, m)| m.trim().eq_ignore_ascii_case(mac.trim()))
        .map(|(name, _)| name.clone())
        .ok_or_else(|| Error::NoInterface {
            mac: mac.to_string(),
            seen: if links.is_empty() {
                "none".to_string()
            } else {
                links
                    .iter()
                    .map(|(n, m)| format!("{n} {m}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

/// The kernel as natd sees it: a sysctl root and the iptables binaries.
#[derive(Debug, Clone)]
pub struct Kernel {
    proc_sys: PathBuf,
}

impl Kernel {
    /// A kernel whose sysctls live under `proc_sys` (normally /proc/sys).
    pub fn new(proc_sys: PathBuf) -> Self {
        Self { proc_sys }
    }

    /// Reads one sysctl, whitespace folded.
    pub fn read_sysctl(&self, key: &str) -> Result<String, Error> {
        std::fs::read_to_string(self.proc_sys.join(key))
            .map(|v| fold(&v))
            .map_err(|source| Error::ReadSysctl {
                key: key.to_string(),
                source,
            })
    }

    fn ensure_sysctl(&self, s: &Sysctl) -> Result<bool, Error> {
        if self.read_sysctl(&s.key)? == fold(&s.value) {
            return Ok(false);
        }
        std::fs::write(self.proc_sys.join(&s.key), format!("{}\n", s.value)).map_err(|source| {
            Error::WriteSysctl {
                key: s.key.clone(),
                value: s.value.clone(),
                source,
            }
        })?;
        let found = self.read_sysctl(&s.key)?;
        if found != fold(&s.value) {
            return Err(Error::SysctlDidNotStick {
                key: s.key.clone(),
                value: s.value.clone(),
                found,
            });
        }
        Ok(true)
    }

    /// Runs `iptables-save` and returns its output.
    pub async fn iptables_save(&self) -> Result<String, Error> {
        self.save(&[]).await
    }

    /// `iptables-save -c`: every rule with its `[packets:bytes]` counters.
    pub async fn iptables_save_counters(&self) -> Result<String, Error> {
        self.save(&["-c"]).await
    }

    async fn save(&self, args: &[&str]) -> Result<String, Error> {
        let out = Command::new("iptables-save")
            .args(args)
            .output()
            .await
            .map_err(|source| Error::Spawn {
                command: "iptables-save",
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Command {
                command: "iptables-save",
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn iptables_restore(&self, input: &str) -> Result<(), Error> {
        let spawn = |source| Error::Spawn {
            command: "iptables-restore",
            source,
        };
        let mut child = Command::new("iptables-restore")
            .args(["--noflush", "--wait", XTABLES_WAIT_SECS])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).await.map_err(spawn)?;
        }
        let out = child.wait_with_output().await.map_err(spawn)?;
        if !out.status.success() {
            return Err(Error::Command {
                command: "iptables-restore",
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Masqueraded connections and the busiest destination's share of NAT ports, from
    /// `conntrack -L --src-nat` (conntrack-tools).
    pub async fn nat_connections(&self) -> Result<NatUse, Error> {
        self.nat_connections_within(None, &std::collections::BTreeSet::new())
            .await
    }

    /// [`Self::nat_connections`] that also finds the open connections whose timeout
    /// ends within `horizon` seconds and which of `watched` are still tracked
    /// ([`super::nat_use_within`]).
    pub async fn nat_connections_within(
        &self,
        horizon: Option<u64>,
        watched: &std::collections::BTreeSet<String>,
    ) -> Result<NatUse, Error> {
        let out = Command::new("conntrack")
            .args(["-L", "--src-nat"])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| Error::Spawn {
                command: "conntrack",
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Command {
                command: "conntrack",
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(nat_use_within(
            &String::from_utf8_lossy(&out.stdout),
            horizon,
            watched,
        ))
    }

    /// Brings the kernel to `plan` and `ruleset`, changing only what differs, and
    /// verifies by reading back. Required sysctls first (forwarding must be on before
    /// the rules matter), then the ruleset, then optional sysctls (the conntrack sysctl
    /// exists only once the conntrack module is loaded, which the ruleset's conntrack
    /// match does).
    pub async fn ensure(&self, plan: &[Sysctl], ruleset: &Ruleset) -> Result<Changes, Error> {
        let mut changes = Changes::default();
        for s in plan.iter().filter(|s| s.required) {
            if self.ensure_sysctl(s)? {
                changes.sysctls.push(format!("{}={}", s.key, s.value));
            }
        }
        let observed = observe(&self.iptables_save().await?);
        if let Some(input) = restore_input(ruleset, &observed) {
            changes.hooks = hook_drift(&observed);
            self.iptables_restore(&input).await?;
            if let Some(remaining) = restore_input(ruleset, &observe(&self.iptables_save().await?))
            {
                return Err(Error::RulesetDidNotStick { remaining });
            }
            changes.ruleset = Some(input);
        }
        for s in plan.iter().filter(|s| !s.required) {
            match self.ensure_sysctl(s) {
                Ok(true) => changes.sysctls.push(format!("{}={}", s.key, s.value)),
                Ok(false) => {}
                Err(e) => changes.skipped.push(e.to_string()),
            }
        }
        Ok(changes)
    }
}

/// The facts the kernel plan needs, read from this host.
pub fn read_facts(mac: &str, vpc_cidrs: Vec<ipnet::Ipv4Net>) -> Result<Facts, Error> {
    Ok(Facts {
        egress_interface: interface_with_mac(mac)?,
        vpc_cidrs,
        egress_ips: Vec::new(),
        forward_new: true,
        overlay: None,
        mem_total_kb: mem_total_kb()?,
    })
}

fn fold(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_are_written_only_when_different() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k = Kernel::new(dir.path().to_owned());
        std::fs::create_dir_all(dir.path().join("net/ipv4")).expect("mkdir");
        std::fs::write(
            dir.path().join("net/ipv4/ip_local_port_range"),
            "1024\t65535\n",
        )
        .expect("w");
        std::fs::write(dir.path().join("net/ipv4/ip_forward"), "0\n").expect("w");
        let fwd = Sysctl {
            key: "net/ipv4/ip_forward".into(),
            value: "1".into(),
            required: true,
        };
        let range = Sysctl {
            key: "net/ipv4/ip_local_port_range".into(),
            value: "1024 65535".into(),
            required: true,
        };
        assert!(k.ensure_sysctl(&fwd).expect("set"));
        assert!(!k.ensure_sysctl(&fwd).expect("again"));
        assert!(!k.ensure_sysctl(&range).expect("tab-separated equals"));
        assert_eq!(k.read_sysctl("net/ipv4/ip_forward").expect("read"), "1");
        let missing = Sysctl {
            key: "net/nope".into(),
            value: "1".into(),
            required: true,
        };
        assert!(
            k.ensure_sysctl(&missing)
                .expect_err("missing")
                .to_string()
                .contains("net/nope")
        );
    }

    #[test]
    fn interface_found_by_mac_case_insensitively() {
        let links = [
            ("lo".to_string(), "00:00:00:00:00:00".to_string()),
            ("ens5".to_string(), "0a:1b:2c:3d:4e:5f".to_string()),
        ];
        assert_eq!(
            with_mac(&links, "0A:1B:2C:3D:4E:5F").expect("found"),
            "ens5"
        );
        let e = with_mac(&links, "02:00:00:00:00:01").expect_err("absent");
        assert!(e.to_string().contains("02:00:00:00:00:01"), "{e}");
        assert!(e.to_string().contains("ens5 0a:1b:2c:3d:4e:5f"), "{e}");
    }
}
