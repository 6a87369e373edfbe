//! A lab instance's operating system: a real systemd, booted by `systemd-nspawn` from
//! this machine's own OS into the instance's network namespace, running natd under the
//! units the image ships (`systemd/natd.service`, `systemd/natd-unhealthy.service`),
//! so their sandbox, watchdog, restarts and `OnFailure=` are exercised rather than
//! assumed.
//!
//! The container's root is a tmpfs with this machine's `/usr` read-only
//! (`--volatile=yes`); `/etc` holds only what an instance's OS has and natd reads (CA
//! certificates, the iptables alternatives, passwd, protocols, ...), natd's
//! configuration at `/etc/natd/natd.toml`, and the units. The one change to the units:
//! `ExecStart=` names the binary under test instead of `/usr/bin/natd` (the host's
//! `/usr` is read-only and has no natd). journald inside the container keeps natd's
//! log; a small unit follows it into the lab's log file for the instance.
//!
//! Not covered here: `systemd-modules-load` does not run in a container (it needs
//! CAP_SYS_MODULE); the bake checks that the modules load (`packer/provision.sh`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The units' binary path inside the container.
const NATD_IN_MACHINE: &str = "/opt/natd/natd";
/// Where natd reads the lab's stand-in for the ENA driver's statistics inside the
/// container (the instance's `.ena` file beside its configuration).
pub const ENA_IN_MACHINE: &str = "/etc/natd/ena-stats";

/// What the lab's log follower and target add to the shipped units.
const LAB_TARGET: &str = "[Unit]\n\
Description=a lab NAT instance: natd as the image enables it, and its log for the lab\n\
Requires=basic.target\n\
After=basic.target\n\
Wants=natd.service natd-lab-log.service\n\
AllowIsolate=yes\n";

const LAB_LOG: &str = "[Unit]\n\
Description=natd's journal, followed into the lab's log for this instance\n\
Before=natd.service\n\
[Service]\n\
ExecStart=/bin/sh -c 'exec journalctl --follow --lines=all --output=cat --unit=natd.service --unit=natd-unhealthy.service >>/var/log/natd-lab.log'\n";

/// Files of this machine's `/etc` that an instance's OS has too and natd or the tools
/// it runs read (HTTPS trust, `iptables` through Debian's alternatives, names).
const ETC: &[&str] = &[
    "ssl",
    "ca-certificates",
    "pki",
    "alternatives",
    "protocols",
    "services",
    "nsswitch.conf",
    "hosts",
    "passwd",
    "group",
];

/// One booted instance OS.
#[derive(Debug)]
pub struct Machine {
    nspawn: Child,
    ns: String,
    /// Restarts of natd.service (systemd's "Scheduled restart job") the lab has counted.
    pub restarts_seen: usize,
    /// Whether natd-unhealthy.service ran (the unit's `OnFailure=`).
    pub reported: bool,
}

/// Whether this machine can boot instance OSes (`systemd-nspawn`, from Debian's
/// `systemd-container`, which tests/setup installs).
pub fn available() -> bool {
    Command::new("systemd-nspawn")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The shipped unit `name` from systemd/, with `ExecStart=` pointing at the binary
/// under test.
fn unit(name: &str) -> String {
    let shipped = std::fs::read_to_string(crate::root().join("systemd").join(name))
        .unwrap_or_else(|e| panic!("systemd/{name}: {e}"));
    assert!(
        shipped.contains("/usr/bin/natd"),
        "systemd/{name} runs /usr/bin/natd"
    );
    shipped.replace("/usr/bin/natd", NATD_IN_MACHINE)
}

impl Machine {
    /// Boots an instance OS in namespace `ns` running `natd` with `config`; natd's log
    /// (its journal) is appended to `log`. `dir` holds the files it binds in.
    pub fn boot(ns: &str, natd: &Path, config: &Path, log: &Path, dir: &Path) -> Self {
        assert!(
            available(),
            "systemd-nspawn is missing: install systemd-container (tests/setup does)"
        );
        let dir = dir.join(format!("{ns}.machine"));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| -> PathBuf {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        // A machine id of its own: with none, systemd would treat the boot as a first
        // boot and enable every unit this machine's OS ships.
        let id = Command::new("systemd-id128")
            .arg("new")
            .output()
            .expect("systemd-id128 new");
        let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
        let credentials = format!(
            "[Service]\nEnvironment=AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} AWS_EC2_METADATA_DISABLED=true\n",
            crate::emulator::TEST_KEY.0,
            crate::emulator::TEST_KEY.1
        );
        let mut binds = vec![
            format!(
                "--bind-ro={}:/etc/machine-id",
                write("machine-id", &format!("{id}\n")).display()
            ),
            format!("--bind-ro={}:{NATD_IN_MACHINE}", natd.display()),
            format!("--bind-ro={}:/etc/natd/natd.toml", config.display()),
            format!(
                "--bind-ro={}:{ENA_IN_MACHINE}",
                config.with_extension("ena").display()
            ),
            format!("--bind={}:/var/log/natd-lab.log", log.display()),
        ];
        for name in ["natd.service", "natd-unhealthy.service"] {
            let p = write(name, &unit(name));
            binds.push(format!(
                "--bind-ro={}:/etc/systemd/system/{name}",
                p.display()
            ));
            // What an instance profile gives natd on EC2: the lab's credentials (and no
            // probing of the real metadata address for them).
            let p = write(&format!("{name}.credentials.conf"), &credentials);
            binds.push(format!(
                "--bind-ro={}:/etc/systemd/system/{name}.d/lab-credentials.conf",
                p.display()
            ));
        }
        for (name, text) in [
            ("natd-lab.target", LAB_TARGET),
            ("natd-lab-log.service", LAB_LOG),
        ] {
            let p = write(name, text);
            binds.push(format!(
                "--bind-ro={}:/etc/systemd/system/{name}",
                p.display()
            ));
        }
        for e in ETC {
            if Path::new("/etc").join(e).exists() {
                binds.push(format!("--bind-ro=/etc/{e}"));
            }
        }
        if !log.exists() {
            std::fs::write(log, "").unwrap();
        }
        let console = std::fs::File::create(dir.join("console.log")).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            // An instance's root has /proc/sys/net writable and sees its own interfaces
            // in /sys/class/net; nspawn gives both only to containers with a network of
            // their own, which it does not count a joined namespace as.
            .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network")
            .args([
                // Root on an instance: natd's unit keeps CAP_NET_ADMIN of it.
                "--capability=CAP_NET_ADMIN",
                "--directory=/",
                "--volatile=yes",
                // No systemd on the host to register with or to place the container in
                // a scope of its own.
                "--keep-unit",
                "--register=no",
                "--quiet",
                &format!("--machine={ns}"),
                &format!("--network-namespace-path=/run/netns/{ns}"),
            ])
            .args(&binds)
            .args([
                "--boot",
                "--",
                "systemd.unit=natd-lab.target",
                "systemd.firstboot=off",
            ])
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .expect("start systemd-nspawn");
        Self {
            nspawn,
            ns: ns.to_string(),
            restarts_seen: 0,
            reported: false,
        }
    }

    /// The host pid of the container's systemd, once it runs.
    pub fn leader(&self) -> Option<u32> {
        leader_in(&self.ns)
    }

    /// Kills everything in the instance at once (as a machine dies) and reaps nspawn.
    pub fn kill(&mut self) {
        // The namespace may be gone already (a crashed instance's); nspawn is reaped
        // below either way.
        crate::netns::kill_all_in(&self.ns);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Ok(None) = self.nspawn.try_wait() {
            self.kill();
        }
    }
}

/// The host pid of the systemd that is PID 1 of a container in namespace `ns`.
pub fn leader_in(ns: &str) -> Option<u32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .is_some_and(|ids| ids.split_whitespace().nth(1) == Some("1"))
            })
        })
}

/// Runs `systemctl args` inside the container whose systemd is `leader`.
pub fn systemctl(leader: u32, args: &[&str]) -> Result<String, String> {
    let out = Command::new("nsenter")
        .args([
            "-t",
            &leader.to_string(),
            "-m",
            "-p",
            "-u",
            "-i",
            "--",
            "systemctl",
        ])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "systemctl {}: {}{}",
            args.join(" "),
            text,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Restarts and reports of natd's unit in its journal `log`: (restarts, reported).
pub fn unit_events(log: &str) -> (usize, bool) {
    let restarts = log
        .lines()
        .filter(|l| l.contains("natd.service: Scheduled restart job"))
        .count();
    let reported = log.lines().any(|l| {
        l.contains("Finished natd-unhealthy.service")
            || l.contains("natd keeps failing: reported Unhealthy")
            || l.contains("natd keeps failing, and this instance is in no Auto Scaling group")
    });
    (restarts, reported)
}
