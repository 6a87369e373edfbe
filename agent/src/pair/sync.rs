//! conntrackd: the standby's copy of the holder's connections, configured and
//! supervised by natd.

use super::*;

/// conntrackd, configured and supervised by natd.
#[derive(Debug)]
pub struct Sync {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: tokio::sync::Mutex<Option<(tokio::process::Child, Ipv4Addr)>>,
    /// conntrackd was started once by this natd.
    started: std::sync::atomic::AtomicBool,
}

impl Sync {
    /// conntrackd `bin`, its files in `dir`, syncing over UDP `port`.
    pub fn new(cfg: &Config) -> Self {
        Self {
            bin: cfg.conntrackd.clone(),
            dir: cfg.state_dir.clone(),
            port: cfg.sync_port,
            child: tokio::sync::Mutex::new(None),
            started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("conntrackd.conf")
    }

    /// The UDP port it syncs over.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// conntrackd's configuration: FTFW (reliable) sync over unicast UDP to the peer,
    /// the peer's state kept in the external cache until a takeover commits it; only
    /// forwarded connections (not the pair's own traffic) are synced.
    pub fn config_text(&self, iface: &str, me: Ipv4Addr, peer: Ipv4Addr) -> String {
        let d = self.dir.display();
        format!(
            r#"# Written by natd (pair mode); rewritten when the peer changes.
Sync {{
    Mode FTFW {{
        ResendQueueSize 131072
        PurgeTimeout 60
        ACKWindowSize 300
        DisableExternalCache Off
    }}
    UDP {{
        IPv4_address {me}
        IPv4_Destination_Address {peer}
        Port {port}
        Interface {iface}
        SndSocketBuffer 1249280
        RcvSocketBuffer 1249280
        Checksum on
    }}
}}
General {{
    Systemd off
    HashSize 32768
    HashLimit 262144
    LogFile {d}/conntrackd.log
    Syslog off
    LockFile {d}/conntrackd.lock
    UNIX {{
        Path {d}/conntrackd.ctl
    }}
    NetlinkBufferSize 2097152
    NetlinkBufferSizeMaxGrowth 8388608
    NetlinkOverrunResync On
    NetlinkEventsReliable Off
    Filter From Userspace {{
        Protocol Accept {{
            TCP
            UDP
            ICMP
        }}
        Address Ignore {{
            IPv4_address 127.0.0.0/8
            IPv4_address {me}
            IPv4_address {peer}
            IPv4_address {OVERLAY_NET}/30
        }}
    }}
}}
"#,
            port = self.port
        )
    }

    /// Starts conntrackd for `peer` unless it runs for it already; `Ok(true)` when it
    /// was (re)started.
    pub async fn ensure(&self, iface: &str, me: Ipv4Addr, peer: Ipv4Addr) -> Result<bool, String> {
        let mut child = self.child.lock().await;
        if let Some((c, p)) = child.as_mut() {
            match c.try_wait() {
                Ok(None) if *p == peer => return Ok(false),
                Ok(None) => {
                    info!("conntrackd: the peer is now {peer}; restarting");
                    let _ = c.kill().await;
                }
                Ok(Some(status)) => warn!("conntrackd exited ({status}); restarting"),
                Err(e) => warn!("conntrackd: {e}; restarting"),
            }
            *child = None;
        }
        if !self.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            stop_leftover(&self.bin, &self.conf()).await;
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        std::fs::write(self.conf(), self.config_text(iface, me, peer))
            .map_err(|e| format!("{}: {e}", self.conf().display()))?;
        // A lock left by a killed conntrackd would stop the new one.
        let _ = std::fs::remove_file(self.dir.join("conntrackd.lock"));
        let _ = std::fs::remove_file(self.dir.join("conntrackd.ctl"));
        let c = tokio::process::Command::new(&self.bin)
            .arg("-C")
            .arg(self.conf())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        *child = Some((c, peer));
        Ok(true)
    }

    /// Runs `conntrackd -C conf <args>`; its output.
    pub async fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let run = tokio::process::Command::new(&self.bin)
            .arg("-C")
            .arg(self.conf())
            .args(args)
            .stdin(Stdio::null())
            .output();
        let out = tokio::time::timeout(CTL_TIMEOUT, run)
            .await
            .map_err(|_| format!("conntrackd {} took over {CTL_TIMEOUT:?}", args.join(" ")))?
            .map_err(|e| format!("conntrackd {}: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "conntrackd {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Whether conntrackd runs.
    pub async fn running(&self) -> bool {
        let mut child = self.child.lock().await;
        child
            .as_mut()
            .is_some_and(|(c, _)| matches!(c.try_wait(), Ok(None)))
    }

    /// Entries in conntrackd's caches, when it answers: (internal: the connections
    /// this instance forwards, external: the peer's state it holds).
    pub async fn cache_entries(&self) -> (Option<u64>, Option<u64>) {
        match self.ctl(&["-s", "cache"]).await {
            Ok(out) => cache_entries(&out),
            Err(_) => (None, None),
        }
    }
}

/// Parses `conntrackd -s cache` ("cache:internal\tactive objects:\t\t   42", then the
/// same for `cache:external`).
pub fn cache_entries(out: &str) -> (Option<u64>, Option<u64>) {
    let count = |cache: &str| {
        out.lines()
            .find(|l| l.starts_with(cache) && l.contains("active objects"))
            .and_then(|l| l.split(':').next_back())
            .and_then(|n| n.trim().parse().ok())
    };
    (count("cache:internal"), count("cache:external"))
}

/// Stops a conntrackd a previous natd started with our configuration and left running
/// (natd killed outside a service manager that stops its children): two conntrackds on
/// one sync port would leave the pair without state sync.
async fn stop_leftover(bin: &std::path::Path, conf: &std::path::Path) {
    let name = bin.file_name().map(|n| n.to_string_lossy().into_owned());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let conf = conf.to_string_lossy().into_owned();
    let mut stopped = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_conntrackd = args.first().is_some_and(|a| {
            std::path::Path::new(a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                == name
        });
        if is_conntrackd && args.len() == 3 && args[1] == "-C" && args[2] == conf {
            let pid = nix::unistd::Pid::from_raw(pid);
            if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
                stopped.push(pid);
            }
        }
    }
    if stopped.is_empty() {
        return;
    }
    warn!(
        "pair: stopping the conntrackd a previous natd left running ({})",
        stopped
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    for _ in 0..20 {
        if stopped
            .iter()
            .all(|p| nix::sys::signal::kill(*p, None).is_err())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in stopped {
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrackds_cache_counts_are_read() {
        let out = "cache:internal \tactive objects:\t\t    1234\n\tactive/total entries:\t\t    1234/\t    1240\n\tcreation OK/failed:\t\t    1240/\t       0\n\ncache:external \tactive objects:\t\t      17\n\tactive/total entries:\t\t      17/\t      17\n";
        assert_eq!(cache_entries(out), (Some(1234), Some(17)));
        assert_eq!(cache_entries("conntrackd: cannot connect"), (None, None));
    }
}
