//! A VPC in a box: the emulator's VPC made real in network namespaces, closely enough
//! that a mistake in natd or natctl shows up as broken traffic.
//!
//! ```text
//!  private-a 10.20.1.10 ─┐                ┌─ NAT instance (natd), one ENI
//!  private-b 10.20.2.10 ─┤ vpc (router) ──┼─ NAT gateway stand-ins
//!  endpoint, database,  ─┘  policy routes └─ internet gateway ── internet 198.51.100.1
//!  other hosts              per subnet       (1:1 NAT of public     (server :8080,
//!                                             and Elastic IPs)       AWS API :emu)
//! ```
//!
//! - **The route tables drive the packets.** A fabric thread reads the emulator's route
//!   tables every [`TICK`] and programs, in the `vpc` router namespace, one routing
//!   table per subnet (selected by source address) whose default route follows the
//!   subnet's route table: to a NAT instance's namespace, to a NAT gateway stand-in, to
//!   the internet gateway, a kernel blackhole for a `blackhole` route, nothing when
//!   there is no route. A NAT gateway's own traffic follows its subnet's table.
//! - **Only public addresses reach the internet.** NAT instances have one interface
//!   with private addresses only, as on EC2: what they forward leaves through the same
//!   interface, back to the router, and by their subnet's table to the internet
//!   gateway, which translates each public IP and Elastic IP the emulator associates
//!   with a private address 1:1 (both ways) and drops everything else: the internet
//!   sees the Elastic IP when natd holds one, and an instance without a public address
//!   (or in a subnet without a route to the gateway) does not reach the internet, nor
//!   the AWS API.
//! - **Source/dest check is enforced** outside the instance, as EC2 does: while an
//!   ENI's check is on, the router drops packets to or from that instance that are not
//!   addressed to or sent by the instance itself.
//! - **Security groups and network ACLs are enforced** by the router from the
//!   emulator's state ([`crate::vpc_policy`]): the private stand-in in a subnet where the
//!   function has an ENI carries the function's groups (otherwise the VPC's default
//!   group), a NAT instance its ENI's, a NAT gateway none.
//! - **Boot takes time.** A launched instance becomes reachable and starts natd only
//!   after the lab's boot delay ([`Lab::with_boot_delay`]; `NATD_LAB_BOOT_DELAY_SECS`
//!   for [`Lab::new`], default 0; about 25 s is what a t4g takes to boot AL2023
//!   minimal), so failover figures mean what they would on EC2.
//! - **Instances are processes.** Each running instance tagged `natd:stack` gets a
//!   namespace (its egress interface carries the ENI's MAC), its own IMDSv2 fixture
//!   and natd under a small supervisor that behaves like the systemd unit (restart on
//!   failure; after 5 failures in a row or exit status 2, `natd --report-unhealthy`).
//!   An instance that leaves `running` loses its namespace and processes.
//! - The AWS API (the emulator) is on the internet, as on AWS.

use crate::emulator::{Emulator, Imds, TEST_KEY};
use crate::netns::Netns;
use crate::world::World;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the fabric follows the emulator.
pub const TICK: Duration = Duration::from_millis(100);
/// How long after the API shows a route change or a secondary address move the lab's
/// packets follow it, unless `NATD_LAB_DATAPLANE_DELAY_MS` says otherwise. AWS documents
/// both as asynchronous (an address remap is to be confirmed through IMDS
/// `local-ipv4s`; route changes propagate) without a figure; half a second is the
/// tests' stated default, so that nothing in natd can count on the change being
/// instant.
pub const DATAPLANE_DELAY: Duration = Duration::from_millis(500);
/// The internet's router and server address.
pub const INTERNET: &str = "198.51.100.1";
/// The server in the internet namespace.
pub const SERVER: &str = "198.51.100.1:8080";
/// The internet's IPv6 address (documentation range).
pub const INTERNET6: &str = "2001:db8:ffff::1";
/// The server in the internet namespace, over IPv6.
pub const SERVER6: &str = "[2001:db8:ffff::1]:8080";
/// The internet gateway's IPv6 address on the internet.
const IGW_OUTSIDE6: &str = "2001:db8:ffff::2";
/// The VPC router's and the internet gateway's IPv6 addresses on their link.
const ROUTER_IGW6: (&str, &str) = ("fd00:ffff::1", "fd00:ffff::2");
/// The internet's echo server for long-lived connections ([`Lab::streams`]).
pub const ECHO: &str = "198.51.100.1:7000";
/// Secrets Manager's regional name, as the function's SDK resolves it.
pub const SECRETS_MANAGER: &str = "secretsmanager.eu-west-1.amazonaws.com";
/// The VPC router's address on every link.
const ROUTER: &str = "10.20.0.1";
/// The internet gateway's address on its link to the VPC router.
const IGW_INSIDE: &str = "169.254.255.2";
/// The internet gateway's address on the internet.
const IGW_OUTSIDE: &str = "198.51.100.2";
/// The router's routing table whose default route is the internet gateway.
const IGW_TABLE: u32 = 200;

/// Something the lab saw happen, with when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An instance started running and got its namespace; natd started.
    Booted(String),
    /// natd on the instance logged "forwarding ready".
    Ready(String),
    /// natd exited (code) and was restarted by the supervisor.
    Restarted(String, Option<i32>),
    /// The supervisor gave up on natd and ran `natd --report-unhealthy`.
    ReportedUnhealthy(String),
    /// The instance left `running`; its namespace is gone.
    Gone(String),
    /// A NAT gateway stand-in came up.
    GatewayUp(String),
    /// A private subnet's next hop changed (subnet, new target or "none"/"blackhole").
    Route(String, String),
}

/// Requests from every private namespace to the internet server, every 100 ms, on a
/// thread of its own, until [`Prober::stop`].
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Result<String, String>>>>,
}

impl Prober {
    /// Stops probing; every result, in order.
    pub fn stop(mut self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default()
    }
}

impl Drop for Prober {
    /// Dropped early (an interrupted demo): stops before the namespaces go.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One NAT instance of the lab.
struct Instance {
    /// Under systemd ([`Lab::under_systemd`]): the instance's OS, whose systemd runs
    /// natd. First, so it is gone before the namespace is deleted.
    machine: Option<crate::machine::Machine>,
    ns: Netns,
    _imds: Imds,
    link: String,
    ip: String,
    /// The ENI's secondary private addresses, as the router delivers them.
    secondary: BTreeSet<String>,
    /// The file the instance's IMDS fixture lists them from.
    local_ipv4s: PathBuf,
    eni: String,
    subnet: String,
    natd: Option<Child>,
    log: PathBuf,
    config: PathBuf,
    failures: Vec<Instant>,
    ready: bool,
    gave_up: bool,
}

/// One NAT gateway stand-in.
struct Gateway {
    _ns: Netns,
    link: String,
    ip: String,
    /// Its Elastic IP, as the internet gateway translates it.
    public: String,
    subnet: Option<String>,
}

/// What the fabric thread shares with the test.
#[derive(Default)]
struct Shared {
    events: Vec<(Instant, Event)>,
    /// Instance id -> its namespace name and natd log.
    instances: BTreeMap<String, (String, PathBuf)>,
    /// Private subnet -> its next hop as programmed.
    routes: BTreeMap<String, String>,
    /// Hosts the test added in private subnets ([`Lab::host`], [`Lab::database`]).
    extra: Vec<ExtraHost>,
    /// Namespaces that resolve names through the VPC (private DNS), with their subnet.
    dns_hosts: Vec<(String, String)>,
    /// Instances that died ([`Lab::crash`]): EC2 still says running, nothing answers.
    crashed: BTreeSet<String>,
    /// Instance id -> the router's side of its interface.
    links: BTreeMap<String, String>,
    /// natd boots with natctl's configuration alone ([`Lab::as_deployed`]).
    as_deployed: bool,
    /// natd runs under the shipped units, started by systemd ([`Lab::under_systemd`]).
    systemd: bool,
}

/// Where a host's security groups come from.
#[derive(Debug, Clone)]
pub enum Groups {
    /// These groups.
    Fixed(Vec<String>),
    /// The DB instance's VPC security groups in the emulator, followed every tick.
    Database(String),
}

/// A host the test added to a private subnet.
#[derive(Debug, Clone)]
struct ExtraHost {
    link: String,
    ip: String,
    subnet: String,
    groups: Groups,
}

/// A PostgreSQL server standing in for an RDS instance: in its own namespace in one of
/// the lab's private subnets, with the instance's security groups enforced, its master
/// user, and the secret's value as password. Stops when dropped.
pub struct Database {
    /// The namespace.
    pub ns: Netns,
    /// Its address.
    pub ip: String,
    /// The master user.
    pub user: String,
    /// The password (the secret's value).
    pub password: String,
    server: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Links `ns` (interface `in0`, address `ip`) to the VPC router `vpc` (interface
/// `link`), with the VPC's addresses behind the router.
fn attach(vpc: &Netns, ns: &Netns, ip: &str, link: &str) {
    attach_dev(vpc, ns, "in0", ip, link);
}

/// [`attach`] with the host's interface named `dev`.
fn attach_dev(vpc: &Netns, ns: &Netns, dev: &str, ip: &str, link: &str) {
    ns.link(dev, &format!("{ip}/32"), vpc, link, &format!("{ROUTER}/32"));
    ns.sh(&format!(
        "ip route add {ROUTER} dev {dev} && ip route add 10.20.0.0/16 via {ROUTER} dev {dev} onlink"
    ));
    vpc.sh(&format!("ip route add {ip}/32 dev {link}"));
}

/// [`attach`] for a host in private subnet number `n` (1-based, router interface
/// `s{n}`): everything else behind the router too, which answers ARP for the host in
/// the subnet.
fn subnet_host(vpc: &Netns, ns: &Netns, ip: &str, link: &str, n: usize) {
    attach(vpc, ns, ip, link);
    ns.sh(&format!("ip route add default via {ROUTER} dev in0 onlink"));
    vpc.sh(&format!("sysctl -qw net.ipv4.conf.s{n}.proxy_arp=1"));
}

/// The lab places its own hosts at fixed addresses between .8 and .79 of a subnet (the
/// function's stand-ins at .10 and .20, the database at .50, flow hosts from .60, a
/// public host at .77): each subnet of the VPC gets explicit CIDR reservations for them,
/// so that EC2 assigns none of them to an interface (an instance, an egress address, a
/// Lambda ENI), as on AWS ("Subnet CIDR reservations", explicit).
fn reserve_host_addresses(emu: &Emulator, vpc: &str) {
    let subnets = emu.aws(&[
        "ec2",
        "describe-subnets",
        "--filters",
        &format!("Name=vpc-id,Values={vpc}"),
    ]);
    for s in subnets["Subnets"].as_array().into_iter().flatten() {
        let (Some(id), Some(cidr)) = (s["SubnetId"].as_str(), s["CidrBlock"].as_str()) else {
            continue;
        };
        let Some(prefix) = cidr
            .strip_suffix(".0/24")
            .filter(|p| p.starts_with("10.20."))
        else {
            continue;
        };
        for block in ["8/29", "16/28", "32/27", "64/28"] {
            emu.aws(&[
                "ec2",
                "create-subnet-cidr-reservation",
                "--subnet-id",
                id,
                "--cidr",
                &format!("{prefix}.{block}"),
                "--reservation-type",
                "explicit",
            ]);
        }
    }
}

/// A command's answer (stdout) or why it failed (stderr), trimmed.
fn answer(out: std::io::Result<std::process::Output>) -> Result<String, String> {
    let out = out.map_err(|e| e.to_string())?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

/// PostgreSQL's programs (Debian keeps them under /usr/lib/postgresql/VERSION/bin).
fn pg_bin(program: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (tests/setup)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .expect("a PostgreSQL version")
        .join("bin")
        .join(program)
}

impl Database {
    /// Connects from `from` with the user and password, runs one query: its answer, or
    /// why it failed (a connection the security groups drop times out in 2 s).
    pub fn query(&self, from: &Netns, sql: &str) -> Result<String, String> {
        let out = from
            .command(&pg_bin("psql"))
            .arg(format!(
                "host={} port=5432 user={} dbname=postgres connect_timeout=2",
                self.ip, self.user
            ))
            .args(["-tAc", sql])
            .env("PGPASSWORD", &self.password)
            .output();
        answer(out)
    }
}

/// The function's stand-in running in a lab namespace (`lab-function`): its init read
/// the secret and opened the database connection once; each [`Function::invoke`]
/// reuses them. Stops when dropped.
pub struct Function {
    child: Child,
    input: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    /// From the process's start to the end of its init.
    pub init: Duration,
    /// How long init took to read the secret.
    pub secret: Duration,
    /// How long init took to open the database connection.
    pub connect: Duration,
}

/// One invocation's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// The database's answer (or why none, in parentheses).
    pub db: String,
    /// The address the internet server saw (or why none, in parentheses).
    pub internet: String,
    /// How long the invocation took inside the handler.
    pub took: Duration,
}

impl Function {
    /// One invocation: a query on the open connection and a request to the internet.
    /// `Err` carries the handler's words when either failed.
    pub fn invoke(&mut self) -> Result<Invocation, String> {
        use std::io::Write;
        writeln!(self.input, "invoke").map_err(|e| format!("handler gone: {e}"))?;
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "handler silent".to_string())?;
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_string))
                .unwrap_or_default()
        };
        if !line.starts_with("ok ") {
            return Err(line);
        }
        Ok(Invocation {
            db: field("db"),
            internet: field("internet"),
            took: Duration::from_secs_f64(field("ms").parse::<f64>().unwrap_or(0.0) / 1000.0),
        })
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lab: namespaces, the fabric thread, and the emulator's VPC they follow.
pub struct Lab {
    /// The emulator.
    pub emu: Arc<Emulator>,
    /// The VPC (two AZs, a public subnet in each).
    pub world: World,
    /// The second public subnet (AZ b).
    pub public_b: String,
    /// The private namespaces, one per private subnet: (subnet, namespace).
    pub private: Vec<(String, Netns)>,
    /// The internet namespace.
    pub internet: Netns,
    /// The VPC router namespace.
    pub vpc: Netns,
    _igw: Netns,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    fabric: Option<std::thread::JoinHandle<()>>,
    boot_delay: Duration,
    hosts: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").field("vpc", &self.world.vpc).finish()
    }
}

impl Lab {
    /// Builds the VPC in the emulator and its namespaces, and starts the fabric, with
    /// the boot delay `NATD_LAB_BOOT_DELAY_SECS` (default 0).
    pub async fn new(emu: Arc<Emulator>) -> Self {
        let secs = std::env::var("NATD_LAB_BOOT_DELAY_SECS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .unwrap_or(0.0);
        Self::with_boot_delay(emu, Duration::from_secs_f64(secs)).await
    }

    /// As [`Lab::new`], with natd configured exactly as natctl deploys it: the
    /// configuration natctl writes into the user data, plus only what points natd at
    /// the lab (the IMDS fixture, the emulator, a state directory). No probe target and
    /// natd's own pass interval and drift cadence, as on AWS; the tests' faster
    /// settings are off.
    /// natd runs under the shipped units, started by a real systemd
    /// ([`Lab::under_systemd`]), as the image runs it.
    pub async fn as_deployed(emu: Arc<Emulator>) -> Self {
        let lab = Self::new(emu).await.under_systemd();
        lab.shared.lock().unwrap().as_deployed = true;
        lab
    }

    /// Instances booted from now on run natd as the image does: under the shipped
    /// units, started by a real systemd (PID 1 of a container booted from this
    /// machine's OS into the instance's namespace; [`crate::machine`]). natd's state
    /// directory is the unit's (`/run/natd`); the lab counts the unit's restarts and
    /// its `OnFailure=` report from natd's journal.
    pub fn under_systemd(self) -> Self {
        assert!(
            crate::machine::available(),
            "systemd-nspawn is missing: install systemd-container (tests/setup does)"
        );
        self.shared.lock().unwrap().systemd = true;
        self
    }

    /// Runs `systemctl args` on `instance` (under systemd): its output, or why it
    /// failed.
    pub fn systemctl(&self, instance: &str, args: &[&str]) -> Result<String, String> {
        let ns = self
            .instances()
            .get(instance)
            .cloned()
            .ok_or_else(|| format!("no instance {instance} in the lab"))?;
        let leader =
            crate::machine::leader_in(&ns).ok_or_else(|| format!("{instance} runs no systemd"))?;
        crate::machine::systemctl(leader, args)
    }

    /// As [`Lab::new`], with instances booting `boot_delay` after they start running.
    pub async fn with_boot_delay(emu: Arc<Emulator>, boot_delay: Duration) -> Self {
        Self::with_delays(emu, boot_delay, dataplane_delay()).await
    }

    /// As [`Lab::with_boot_delay`], with route changes and address moves reaching
    /// packets `dataplane` after the API shows them ([`DATAPLANE_DELAY`]).
    pub async fn with_delays(
        emu: Arc<Emulator>,
        boot_delay: Duration,
        dataplane: Duration,
    ) -> Self {
        let world = World::new(&emu.sdk()).await;
        let public_b = world.public_subnet_b().await;
        reserve_host_addresses(&emu, &world.vpc);
        let internet = Netns::new("inet");
        internet.sh(&format!(
            // A fixed MAC: a bridge otherwise takes its lowest port's, which changes as
            // NATs come and go and strands the neighbours' ARP entries.
            "ip link add br0 address 02:00:00:00:00:01 type bridge && ip addr add {INTERNET}/24 dev br0 && ip link set br0 up"
        ));
        internet.sh(&format!(
            "ip -6 addr add {INTERNET6}/64 dev br0 nodad && ip -6 route add default via {IGW_OUTSIDE6}"
        ));
        crate::dataplane::serve_peer_address(&internet, SERVER);
        crate::dataplane::serve_peer_address(&internet, SERVER6);
        crate::dataplane::serve_echo(&internet, ECHO);
        let api: SocketAddr = format!("{INTERNET}:{}", emu.port).parse().unwrap();
        internet.forward(api, emu.port);
        // The public side of Secrets Manager (what its name resolves to without private
        // DNS): HTTPS's port on the internet, answered by the emulator.
        internet.forward(format!("{INTERNET}:443").parse().unwrap(), emu.port);
        let vpc = Netns::new("vpc");
        vpc.sh(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0\n\
             ip rule add to 10.20.0.0/16 lookup main priority 900",
        );
        // The internet gateway: between the router and the internet, translating the
        // VPC's public and Elastic IPs 1:1 to private addresses (the fabric programs
        // the translations); everything else it drops.
        let igw = Netns::new("igw");
        attach(&vpc, &igw, IGW_INSIDE, "igw0");
        igw.sh(&format!(
            "ip link add eth1 type veth peer name igw1 netns {inet}\n\
             ip addr add {IGW_OUTSIDE}/24 dev eth1 && ip link set eth1 up && ip route add default via {INTERNET}\n\
             sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0\n\
             iptables -t nat -N IGW-PRE && iptables -t nat -A PREROUTING -j IGW-PRE\n\
             iptables -t nat -N IGW-POST && iptables -t nat -A POSTROUTING -j IGW-POST\n\
             iptables -N IGW-FWD && iptables -A FORWARD -j IGW-FWD && iptables -A IGW-FWD -j DROP",
            inet = internet.name
        ));
        internet.sh(&format!(
            "ip link set igw1 master br0 && ip link set igw1 up && ip route add default via {IGW_OUTSIDE}"
        ));
        // IPv6: the gateway is also the VPC's egress-only internet gateway stand-in. It
        // forwards IPv6 untranslated, out from the VPC and back only as replies:
        // nothing new comes in. The router sends a subnet's IPv6 to it when the
        // subnet's route table has ::/0 to an egress-only gateway (the fabric).
        let (r6, g6) = ROUTER_IGW6;
        igw.sh(&format!(
            "sysctl -qw net.ipv6.conf.all.forwarding=1\n\
             ip -6 addr add {IGW_OUTSIDE6}/64 dev eth1 nodad && ip -6 addr add {g6}/64 dev in0 nodad\n\
             ip -6 route add default via {r6} dev in0\n\
             ip6tables -A FORWARD -i in0 -o eth1 -j ACCEPT\n\
             ip6tables -A FORWARD -i eth1 -o in0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
             ip6tables -A FORWARD -j DROP"
        ));
        vpc.sh(&format!(
            "sysctl -qw net.ipv6.conf.all.forwarding=1 && ip -6 addr add {r6}/64 dev igw0 nodad"
        ));
        vpc.sh(&format!(
            "ip route add default via {IGW_INSIDE} dev igw0 onlink table {IGW_TABLE}"
        ));
        let mut private = Vec::new();
        for (i, subnet) in world.private_subnets.iter().enumerate() {
            let ns = Netns::new(&format!("priv{i}"));
            let n = i + 1;
            ns.link(
                "eth0",
                &format!("10.20.{n}.10/24"),
                &vpc,
                &format!("s{n}"),
                &format!("10.20.{n}.1/24"),
            );
            ns.sh(&format!("ip route add default via 10.20.{n}.1"));
            vpc.sh(&format!(
                "ip rule add from 10.20.{n}.0/24 lookup {} priority 1000",
                100 + n
            ));
            private.push((subnet.clone(), ns));
        }
        let shared = Arc::new(Mutex::new(Shared {
            dns_hosts: private
                .iter()
                .map(|(subnet, ns): &(String, Netns)| (ns.name.clone(), subnet.clone()))
                .collect(),
            ..Shared::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let fabric = {
            let (emu, shared, stop) = (emu.clone(), shared.clone(), stop.clone());
            let names = (vpc.name.clone(), igw.name.clone());
            let subnets: Vec<String> = world.private_subnets.clone();
            let private_ns: Vec<String> = private.iter().map(|(_, ns)| ns.name.clone()).collect();
            let vpc_id = world.vpc.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let mut fabric = Fabric::new(emu, shared, vpc_id, names, subnets);
                fabric.private_ns = private_ns;
                fabric.boot_delay = boot_delay;
                fabric.propagation = Propagation::new(dataplane);
                rt.block_on(fabric.run(stop));
            })
        };
        Self {
            emu,
            world,
            public_b,
            private,
            internet,
            vpc,
            _igw: igw,
            shared,
            stop,
            fabric: Some(fabric),
            boot_delay,
            hosts: Default::default(),
        }
    }

    /// What the function's init does first: reads `secret` from `ns` by Secrets
    /// Manager's regional name, resolved as the VPC resolves it (to the interface
    /// endpoint with private DNS on, otherwise to the public side, reachable through a
    /// NAT): its value, or why it failed.
    pub fn secret_from(&self, ns: &Netns, secret: &str) -> Result<String, String> {
        let out = ns
            .command(&crate::python().with_file_name("aws"))
            .args([
                "--endpoint-url",
                &format!("http://{SECRETS_MANAGER}:443"),
                "--region",
                "eu-west-1",
                "--cli-connect-timeout",
                "2",
                "--cli-read-timeout",
                "5",
                "--output",
                "text",
                "secretsmanager",
                "get-secret-value",
                "--secret-id",
                secret,
                "--query",
                "SecretString",
            ])
            .envs(natd_env())
            .env("AWS_MAX_ATTEMPTS", "1")
            .env_remove("AWS_PROFILE")
            .output();
        answer(out)
    }

    /// Starts the function's handler in `ns` (a stand-in namespace, carrying the
    /// function's groups): its init reads `secret` (by Secrets Manager's regional name,
    /// resolved and routed as the VPC does) and connects to `db` with the secret's
    /// password, once. The handler, or why its init failed.
    pub fn function(&self, ns: &Netns, secret: &str, db: &Database) -> Result<Function, String> {
        use std::io::BufRead;
        let started = Instant::now();
        let mut child = ns
            .command(&crate::bin("lab-function"))
            .args([secret, &db.ip, &db.user, SERVER])
            .envs(natd_env())
            .env("LAB_PSQL", pg_bin("psql"))
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_PROFILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("lab-function: {e}"))?;
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().ok_or("lab-function: no stdout")?;
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let input = child.stdin.take().ok_or("lab-function: no stdin")?;
        let mut f = Function {
            child,
            input,
            lines,
            init: Duration::ZERO,
            secret: Duration::ZERO,
            connect: Duration::ZERO,
        };
        let ready = f
            .lines
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| "init: no answer".to_string())?;
        f.init = started.elapsed();
        let ms = |k: &str| {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_millis)
        };
        match (ms("secret_ms"), ms("db_ms")) {
            (Some(s), Some(d)) if ready.starts_with("ready ") => {
                f.secret = s;
                f.connect = d;
                Ok(f)
            }
            _ => Err(ready),
        }
    }

    /// The address Secrets Manager's name resolves to in `ns` (the VPC's DNS as the
    /// lab plays it).
    pub fn resolves(&self, ns: &Netns) -> Option<String> {
        let hosts = std::fs::read_to_string(format!("/etc/netns/{}/hosts", ns.name)).ok()?;
        hosts
            .lines()
            .find(|l| l.ends_with(SECRETS_MANAGER))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string)
    }

    /// A host at `ip` in private subnet `subnet` (an index of `world.private_subnets`)
    /// with `groups`: its own namespace and link to the router (which answers ARP for it
    /// in the subnet), registered for the security groups and ACLs. It goes with the
    /// returned namespace.
    pub fn host(&self, role: &str, subnet: usize, ip: &str, groups: Groups) -> Netns {
        let n = subnet + 1;
        let k = self.hosts.fetch_add(1, Ordering::SeqCst) + 1;
        let link = format!("x{k}");
        let ns = Netns::new(role);
        subnet_host(&self.vpc, &ns, ip, &link, n);
        let mut shared = self.shared.lock().unwrap();
        shared.extra.push(ExtraHost {
            link,
            ip: ip.to_string(),
            subnet: self.world.private_subnets[subnet].clone(),
            groups,
        });
        shared
            .dns_hosts
            .push((ns.name.clone(), self.world.private_subnets[subnet].clone()));
        drop(shared);
        ns
    }

    /// A host at `ip` (10.20.0.x) in the first public subnet with `groups`, like
    /// [`Lab::host`]: what runs there leaves by the public subnet's route table, to the
    /// internet gateway, which drops it unless the host's address has a public IP.
    pub fn public_host(&self, role: &str, ip: &str, groups: Groups) -> Netns {
        let k = self.hosts.fetch_add(1, Ordering::SeqCst) + 1;
        let link = format!("x{k}");
        let ns = Netns::new(role);
        attach(&self.vpc, &ns, ip, &link);
        ns.sh(&format!("ip route add default via {ROUTER} dev in0 onlink"));
        let mut shared = self.shared.lock().unwrap();
        shared.extra.push(ExtraHost {
            link,
            ip: ip.to_string(),
            subnet: self.world.public_subnet.clone(),
            groups,
        });
        shared
            .dns_hosts
            .push((ns.name.clone(), self.world.public_subnet.clone()));
        drop(shared);
        ns
    }

    /// PostgreSQL for DB instance `id` of the emulator: in the first of its subnet
    /// group's subnets that the lab has (at .50), with the instance's security groups,
    /// its master user, and the value of `secret` (its `password` field when it is JSON)
    /// as the password.
    pub fn database(&self, id: &str, secret: &str) -> Database {
        let d = self.emu.aws(&[
            "rds",
            "describe-db-instances",
            "--db-instance-identifier",
            id,
        ]);
        let d = &d["DBInstances"][0];
        let user = d["MasterUsername"].as_str().unwrap().to_string();
        let subnets: Vec<&str> = d["DBSubnetGroup"]["Subnets"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["SubnetIdentifier"].as_str())
            .collect();
        let subnet = self
            .world
            .private_subnets
            .iter()
            .position(|s| subnets.contains(&s.as_str()))
            .expect("the DB's subnet group has one of the lab's private subnets");
        let value = self
            .emu
            .aws(&["secretsmanager", "get-secret-value", "--secret-id", secret]);
        let value = value["SecretString"].as_str().unwrap().to_string();
        let password = serde_json::from_str::<serde_json::Value>(&value)
            .ok()
            .and_then(|v| v["password"].as_str().map(str::to_string))
            .unwrap_or(value);
        let ip = format!("10.20.{}.50", subnet + 1);
        let ns = self.host("db", subnet, &ip, Groups::Database(id.to_string()));
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, &password).unwrap();
        let ok = std::process::Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(ok.success());
        let init = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", &user, "-A", "scram-sha-256", "--pwfile"])
            .arg(&pw)
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let mut hba = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("pg_hba.conf"))
            .unwrap();
        std::io::Write::write_all(&mut hba, b"host all all 10.20.0.0/16 scram-sha-256\n").unwrap();
        let server = ns
            .command(std::path::Path::new("runuser"))
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-c", &format!("listen_addresses={ip}"), "-c", "port=5432"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .stdout(Stdio::null())
            .stderr(log_file(&dir.path().join("postgres.log")))
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            let ready = ns
                .command(&pg_bin("pg_isready"))
                .args(["-q", "-h", &ip, "-p", "5432"])
                .status()
                .unwrap();
            if ready.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(dir.path().join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Database {
            ns,
            ip,
            user,
            password,
            server,
            _dir: dir,
        }
    }

    /// How long a launched instance takes to boot here.
    pub fn boot_delay(&self) -> Duration {
        self.boot_delay
    }

    /// A request from the private namespace of subnet `i` to the internet server: what
    /// the server saw as the client address, or why it failed.
    pub fn fetch(&self, i: usize) -> Result<String, String> {
        crate::dataplane::fetch(&self.private[i].1, SERVER)
    }

    /// [`Lab::fetch`] off the async runtime's thread.
    pub async fn fetch_async(&self, i: usize) -> Result<String, String> {
        let name = self.private[i].1.name.clone();
        tokio::task::spawn_blocking(move || crate::dataplane::fetch(&Netns::named(&name), SERVER))
            .await
            .unwrap()
    }

    /// Starts probing egress from every private namespace.
    pub fn probe(&self) -> Prober {
        let names: Vec<String> = self.private.iter().map(|(_, ns)| ns.name.clone()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut results = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                for name in &names {
                    results.push(crate::dataplane::fetch(&Netns::named(name), SERVER));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            results
        });
        Prober {
            stop,
            thread: Some(thread),
        }
    }

    /// Everything the lab saw so far.
    pub fn events(&self) -> Vec<(Instant, Event)> {
        self.shared.lock().unwrap().events.clone()
    }

    /// `instance`'s public address (a public IP given at launch or an Elastic IP), as
    /// the emulator has it: what the internet sees of it.
    pub async fn public_ip(&self, instance: &str) -> Option<String> {
        aws_sdk_ec2::Client::new(&self.emu.sdk())
            .describe_instances()
            .instance_ids(instance)
            .send()
            .await
            .ok()?
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| i.public_ip_address().map(str::to_string))
    }

    /// The running instances: id -> namespace name.
    pub fn instances(&self) -> BTreeMap<String, String> {
        self.shared
            .lock()
            .unwrap()
            .instances
            .iter()
            .map(|(k, (ns, _))| (k.clone(), ns.clone()))
            .collect()
    }

    /// natd's log on `instance`.
    pub fn natd_log(&self, instance: &str) -> String {
        let log = self
            .shared
            .lock()
            .unwrap()
            .instances
            .get(instance)
            .map(|(_, l)| l.clone());
        log.and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    /// Each private subnet's next hop as the fabric programmed it.
    pub fn routes(&self) -> BTreeMap<String, String> {
        self.shared.lock().unwrap().routes.clone()
    }

    /// The next hop of each private subnet, in the order of `world.private_subnets`
    /// (empty where none is programmed).
    pub fn private_routes(&self) -> Vec<String> {
        let routes = self.routes();
        self.world
            .private_subnets
            .iter()
            .map(|s| routes.get(s).cloned().unwrap_or_default())
            .collect()
    }

    /// The pids of natd processes in `instance`'s namespace (only that namespace's:
    /// `pgrep` would see every natd on the host).
    pub fn natd_pids(&self, instance: &str) -> Vec<String> {
        self.pids(instance, "natd")
    }

    /// The pids of processes named `comm` in `instance`'s namespace.
    pub fn pids(&self, instance: &str, comm: &str) -> Vec<String> {
        let ns = self.instances().get(instance).cloned().unwrap_or_default();
        let out = std::process::Command::new("ip")
            .args(["netns", "pids", &ns])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
            })
            .map(str::to_string)
            .collect()
    }

    /// Opens `n` long-lived connections from private subnet `i` to the internet's echo
    /// server ([`ECHO`]).
    pub fn streams(&self, i: usize, n: usize) -> Result<Vec<crate::dataplane::Stream>, String> {
        (0..n)
            .map(|_| crate::dataplane::Stream::open(&self.private[i].1, ECHO))
            .collect()
    }

    /// The public addresses of the Elastic IPs tagged `natd:egress=<stack>` (the
    /// stack's egress addresses), in EC2's order.
    pub fn egress_ips(&self, stack: &str) -> Vec<String> {
        let filter = format!("Name=tag:{},Values={stack}", natd_contract::EGRESS_TAG);
        self.emu
            .aws(&["ec2", "describe-addresses", "--filters", &filter])["Addresses"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["PublicIp"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many egress addresses natd on `instance` last said it SNATs to (pair mode).
    pub fn snat_addresses(&self, instance: &str) -> usize {
        self.natd_log(instance)
            .lines()
            .rfind(|l| l.contains("SNAT to the egress address(es)"))
            .and_then(|l| l.rsplit_once('['))
            .map(|(_, ips)| {
                ips.trim_end_matches(']')
                    .split(", ")
                    .filter(|ip| !ip.is_empty())
                    .count()
            })
            .unwrap_or(0)
    }

    /// `hosts` hosts in private subnet `subnet` (at .60, .61, ...) in the VPC's default
    /// security group, for many connections at once ([`crate::flows::Flows`]): each
    /// host's ports to one destination are limited, as each process's descriptors.
    pub fn flow_hosts(&self, subnet: usize, hosts: usize) -> Vec<Netns> {
        let vpc = self.world.vpc.clone();
        let default_sg = self.emu.aws(&[
            "ec2",
            "describe-security-groups",
            "--filters",
            &format!("Name=vpc-id,Values={vpc}"),
            "Name=group-name,Values=default",
        ])["SecurityGroups"][0]["GroupId"]
            .as_str()
            .expect("the VPC's default group")
            .to_string();
        (0..hosts)
            .map(|h| {
                self.host(
                    &format!("flows{h}"),
                    subnet,
                    &format!("10.20.{}.{}", subnet + 1, 60 + h),
                    Groups::Fixed(vec![default_sg.clone()]),
                )
            })
            .collect()
    }

    /// Runs `cmd` (a shell command) in `instance`'s namespace: its output, or why it
    /// failed.
    pub fn exec(&self, instance: &str, cmd: &str) -> Result<String, String> {
        let ns = self
            .instances()
            .get(instance)
            .cloned()
            .ok_or_else(|| format!("no instance {instance} in the lab"))?;
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "sh", "-c", cmd])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{cmd} on {instance}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The VPC router's side of `instance`'s interface (for faults played at the router).
    pub fn link(&self, instance: &str) -> Option<String> {
        self.shared.lock().unwrap().links.get(instance).cloned()
    }

    /// The instance dies at once, as a machine does: everything in its namespace is
    /// killed and the namespace (its interface with it) is gone; EC2 still says running
    /// (until, as on AWS, its group finds out or someone terminates it). Returns when.
    pub fn crash(&self, instance: &str) -> Instant {
        let ns = self.instances().get(instance).cloned().unwrap_or_default();
        // The interface first, from the router's side (at once: a namespace being
        // deleted lingers while the kernel cleans it up), then everything inside.
        if let Some(link) = self.link(instance) {
            self.vpc.sh_status(&format!("ip link del {link}"));
        }
        let at = Instant::now();
        // Best effort: the instance may already be gone (its group replaced it).
        crate::netns::kill_and_delete(&ns);
        self.shared
            .lock()
            .unwrap()
            .crashed
            .insert(instance.to_string());
        at
    }

    /// Terminates `instance` in EC2, as its Auto Scaling group does once it finds the
    /// instance dead (the group then launches a replacement).
    pub async fn terminate(&self, instance: &str) {
        self.world
            .ec2
            .terminate_instances()
            .instance_ids(instance)
            .send()
            .await
            .unwrap();
    }

    /// Sets the ENA driver's counters natd reads on `instance` (the rest stay 0, and
    /// `conntrack_allowance_available` at its stand-in value unless given).
    pub fn set_ena(&self, instance: &str, counters: &[(&str, u64)]) {
        let values: BTreeMap<String, u64> =
            counters.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        // Beside the instance's log and configuration (`{id}.ena`).
        let log = self
            .shared
            .lock()
            .unwrap()
            .instances
            .get(instance)
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| panic!("no instance {instance}"));
        std::fs::write(log.with_extension("ena"), ena_stats(&values)).unwrap();
    }

    /// Kills (SIGKILL) natd on `instance`, as a crash would.
    pub fn kill_natd(&self, instance: &str) {
        for p in self.natd_pids(instance) {
            let _ = std::process::Command::new("kill").args(["-9", &p]).status();
        }
    }

    /// Stops the fabric and removes every instance and gateway namespace.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.fabric.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The fabric: follows the emulator, owns instance and gateway namespaces.
/// The lab's data-plane delay: `NATD_LAB_DATAPLANE_DELAY_MS`, else [`DATAPLANE_DELAY`].
pub fn dataplane_delay() -> Duration {
    std::env::var("NATD_LAB_DATAPLANE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(DATAPLANE_DELAY)
}

/// Changes the VPC's data plane takes up only some time after the API shows them: per
/// thing (a subnet's route, an interface's addresses), the value the API shows and since
/// when; it is applied once it has shown that long.
#[derive(Debug)]
struct Propagation {
    delay: Duration,
    seen: BTreeMap<String, (String, Instant)>,
}

impl Propagation {
    fn new(delay: Duration) -> Self {
        Self {
            delay,
            seen: BTreeMap::new(),
        }
    }

    /// Whether `want` for `key`, as the API shows it now, has shown long enough.
    fn due(&mut self, key: &str, want: &str, now: Instant) -> bool {
        let e = self
            .seen
            .entry(key.to_string())
            .or_insert_with(|| (want.to_string(), now));
        if e.0 != want {
            *e = (want.to_string(), now);
        }
        now.duration_since(e.1) >= self.delay
    }
}

struct Fabric {
    emu: Arc<Emulator>,
    ec2: aws_sdk_ec2::Client,
    rds: aws_sdk_rds::Client,
    shared: Arc<Mutex<Shared>>,
    vpc_id: String,
    vpc: Netns,
    igw: Netns,
    /// The lab's private subnets, in order (routing tables 101, 102, ...).
    subnets: Vec<String>,
    /// Every subnet of the VPC: its CIDR and AZ.
    subnet_info: BTreeMap<String, (String, String)>,
    /// The routing tables of the VPC's other subnets (public ones): subnet -> table.
    tables: BTreeMap<String, u32>,
    /// The internet gateway's translations as applied: private address -> public.
    translations: BTreeMap<String, String>,
    instances: BTreeMap<String, Instance>,
    gateways: BTreeMap<String, Gateway>,
    programmed: BTreeMap<String, String>,
    /// Subnets whose route targets something the lab does not run: ticks waited.
    unknown: BTreeMap<String, u32>,
    /// The source/dest check chains and rules last applied, per instance.
    checks: BTreeSet<(String, String)>,
    next_link: u32,
    dir: tempfile::TempDir,
    /// How long an instance takes from `running` to reachable with natd started.
    boot_delay: Duration,
    /// Route changes and address moves reach packets this long after the API shows
    /// them ([`DATAPLANE_DELAY`]).
    propagation: Propagation,
    /// Instances running but still booting: when the lab first saw them running.
    booting: BTreeMap<String, Instant>,
    /// The security group and network ACL ruleset last applied, and its chains.
    policy: (String, BTreeSet<String>),
    /// Interface endpoints' network interfaces, as hosts: ENI id -> (namespace, link).
    endpoints: BTreeMap<String, (Netns, String)>,
    /// Namespace -> the hosts file written for it (private DNS).
    resolved: BTreeMap<String, String>,
    /// The private subnets' hosts' namespaces, in the order of `subnets`.
    private_ns: Vec<String>,
    /// Private subnet -> (its IPv6 block, the IPv6 hop programmed: "eigw" or "none").
    ipv6: BTreeMap<String, (String, String)>,
}

/// A private subnet's IPv6 addresses in the lab: its host's (`::10`) and the router's
/// (`::1`).
fn ipv6_hosts(block: ipnet::Ipv6Net) -> (std::net::Ipv6Addr, std::net::Ipv6Addr) {
    let base = u128::from(block.network());
    (
        std::net::Ipv6Addr::from(base + 0x10),
        std::net::Ipv6Addr::from(base + 1),
    )
}

fn borrowed(name: &str) -> Netns {
    Netns::named(name)
}

impl Fabric {
    fn new(
        emu: Arc<Emulator>,
        shared: Arc<Mutex<Shared>>,
        vpc_id: String,
        (vpc, igw): (String, String),
        subnets: Vec<String>,
    ) -> Self {
        let ec2 = aws_sdk_ec2::Client::new(&emu.sdk());
        let rds = aws_sdk_rds::Client::new(&emu.sdk());
        Self {
            emu,
            ec2,
            rds,
            shared,
            vpc_id,
            vpc: borrowed(&vpc),
            igw: borrowed(&igw),
            subnets,
            subnet_info: BTreeMap::new(),
            tables: BTreeMap::new(),
            translations: BTreeMap::new(),
            instances: BTreeMap::new(),
            gateways: BTreeMap::new(),
            programmed: BTreeMap::new(),
            unknown: BTreeMap::new(),
            checks: BTreeSet::new(),
            next_link: 0,
            dir: tempfile::tempdir().unwrap(),
            boot_delay: Duration::ZERO,
            propagation: Propagation::new(DATAPLANE_DELAY),
            booting: BTreeMap::new(),
            policy: Default::default(),
            endpoints: BTreeMap::new(),
            resolved: BTreeMap::new(),
            private_ns: Vec::new(),
            ipv6: BTreeMap::new(),
        }
    }

    fn event(&self, e: Event) {
        self.shared.lock().unwrap().events.push((Instant::now(), e));
    }

    async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            if let Err(e) = self.tick().await {
                eprintln!("lab fabric: {e}");
            }
            self.supervise();
            tokio::time::sleep(TICK.saturating_sub(started.elapsed())).await;
        }
        // Everything the lab started goes with it.
        for (_, mut i) in std::mem::take(&mut self.instances) {
            if let Some(mut c) = i.natd.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            if let Some(mut m) = i.machine.take() {
                m.kill();
            }
        }
        self.gateways.clear();
        self.endpoints.clear();
        for ns in self.resolved.keys() {
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
    }

    async fn tick(&mut self) -> Result<(), String> {
        use aws_sdk_ec2::types::Filter;
        let vpc_id = self.vpc_id.clone();
        let in_vpc = || Filter::builder().name("vpc-id").values(&vpc_id).build();
        // Subnets: each routes by its own table, selected by source address.
        let subnets = self
            .ec2
            .describe_subnets()
            .filters(in_vpc())
            .send()
            .await
            .map_err(|e| format!("DescribeSubnets: {e:?}"))?;
        self.subnet_info = subnets
            .subnets()
            .iter()
            .filter_map(|s| {
                Some((
                    s.subnet_id()?.to_string(),
                    (
                        s.cidr_block()?.to_string(),
                        s.availability_zone().unwrap_or_default().to_string(),
                    ),
                ))
            })
            .collect();
        for (id, (cidr, _)) in &self.subnet_info {
            if self.subnets.contains(id) || self.tables.contains_key(id) {
                continue;
            }
            let table = 120 + self.tables.len() as u32;
            if self
                .vpc
                .sh_status(&format!(
                    "ip rule add from {cidr} lookup {table} priority 1000"
                ))
                .status
                .success()
            {
                self.tables.insert(id.clone(), table);
            }
        }
        // Instances.
        let r = self
            .ec2
            .describe_instances()
            .filters(in_vpc())
            .send()
            .await
            .map_err(|e| format!("DescribeInstances: {e:?}"))?;
        let mut running = BTreeMap::new();
        for i in r.reservations().iter().flat_map(|r| r.instances()) {
            let stack = i
                .tags()
                .iter()
                .find(|t| t.key() == Some(natd_contract::STACK_TAG))
                .and_then(|t| t.value());
            let state = i.state().and_then(|s| s.name()).map(|s| s.as_str());
            if let (Some(stack), Some("running" | "pending")) = (stack, state) {
                let eni = i.network_interfaces().first();
                running.insert(
                    i.instance_id().unwrap_or_default().to_string(),
                    (
                        stack.to_string(),
                        eni.and_then(|n| n.network_interface_id())
                            .unwrap_or_default()
                            .to_string(),
                        eni.and_then(|n| n.mac_address())
                            .unwrap_or_default()
                            .to_string(),
                        i.private_ip_address().unwrap_or_default().to_string(),
                        eni.and_then(|n| n.source_dest_check()).unwrap_or(true),
                        i.subnet_id().unwrap_or_default().to_string(),
                        eni.map(|n| {
                            n.private_ip_addresses()
                                .iter()
                                .filter(|a| a.primary() != Some(true))
                                .filter_map(|a| a.private_ip_address().map(str::to_string))
                                .collect::<BTreeSet<String>>()
                        })
                        .unwrap_or_default(),
                    ),
                );
            }
        }
        let crashed = self.shared.lock().unwrap().crashed.clone();
        let gone: Vec<String> = self
            .instances
            .keys()
            .filter(|k| !running.contains_key(*k) || crashed.contains(*k))
            .cloned()
            .collect();
        for id in gone {
            if let Some(mut i) = self.instances.remove(&id) {
                if let Some(mut c) = i.natd.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                // What its units did last: the report that got it replaced reaches the
                // lab's log through the journal a moment after the group acted on it.
                let crashing = i
                    .machine
                    .as_ref()
                    .is_some_and(|m| m.restarts_seen > 0 && !m.reported);
                let deadline = Instant::now() + Duration::from_secs(2);
                loop {
                    let events = machine_events(&id, &mut i);
                    let reported = events
                        .iter()
                        .any(|e| matches!(e, Event::ReportedUnhealthy(_)));
                    for e in events {
                        self.event(e);
                    }
                    if !crashing || reported || Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                if let Some(mut m) = i.machine.take() {
                    m.kill();
                }
                self.vpc.sh_status(&format!("ip link del {}", i.link));
                drop(i);
                self.shared.lock().unwrap().instances.remove(&id);
                self.event(Event::Gone(id));
            }
        }
        self.booting.retain(|id, _| running.contains_key(id));
        let now = Instant::now();
        for (id, (stack, eni, mac, ip, _, subnet, _)) in &running {
            if !self.instances.contains_key(id) && !crashed.contains(id) {
                let seen = *self.booting.entry(id.clone()).or_insert(now);
                if now.duration_since(seen) >= self.boot_delay {
                    self.booting.remove(id);
                    let config = self.user_config(id).await;
                    self.boot(id, stack, eni, mac, ip, subnet, &config);
                }
            }
        }
        // Secondary private addresses: the VPC delivers each to the interface that holds
        // it now (an address moved between interfaces follows within a tick).
        for (id, v) in &running {
            let Some(i) = self.instances.get_mut(id) else {
                continue;
            };
            if i.secondary == v.6 {
                continue;
            }
            let want = v.6.iter().cloned().collect::<Vec<_>>().join(" ");
            if !self.propagation.due(&format!("ips {id}"), &want, now) {
                continue;
            }
            let mut cmd = String::new();
            for ip in i.secondary.difference(&v.6) {
                cmd.push_str(&format!(
                    "ip route del {ip}/32 dev {} 2>/dev/null; ",
                    i.link
                ));
            }
            // By the interface's own address as next hop: the VPC delivers a secondary
            // address to its interface without the instance answering ARP for it (the
            // OS need not configure it to forward or to NAT for it).
            for ip in v.6.difference(&i.secondary) {
                cmd.push_str(&format!(
                    "ip route replace {ip}/32 via {} dev {}; ",
                    i.ip, i.link
                ));
            }
            if self.vpc.sh_status(&format!("{cmd}true")).status.success() {
                i.secondary = v.6.clone();
                // What IMDS lists for the interface: the addresses packets now reach.
                let _ = std::fs::write(&i.local_ipv4s, want.replace(' ', "\n"));
            }
        }
        // Source/dest check, enforced by the router: an instance with the check on
        // sends and receives only with its own addresses (a chain per direction and
        // instance, so one instance's verdict does not skip another's).
        let checks: BTreeSet<(String, String)> = running
            .iter()
            .filter(|(id, v)| v.4 && self.instances.contains_key(*id))
            .map(|(id, _)| {
                let i = &self.instances[id];
                let own: Vec<&String> = std::iter::once(&i.ip).chain(&i.secondary).collect();
                let (mut chains, mut rules) = (String::new(), String::new());
                for (dir, side, c) in [("-o", "-d", "O"), ("-i", "-s", "I")] {
                    let chain = format!("LAB-SDC{c}-{}", i.link);
                    chains.push_str(&format!(":{chain} - [0:0]\n"));
                    rules.push_str(&format!("-F {chain}\n"));
                    for ip in &own {
                        rules.push_str(&format!("-A {chain} {side} {ip} -j RETURN\n"));
                    }
                    rules.push_str(&format!(
                        "-A {chain} -j DROP\n-A LAB-SDC {dir} {l} -j {chain}\n",
                        l = i.link
                    ));
                }
                (chains, rules)
            })
            .collect();
        if checks != self.checks {
            let mut rules = String::from("*filter\n:LAB-SDC - [0:0]\n");
            for (chains, _) in &checks {
                rules.push_str(chains);
            }
            rules.push_str("-F LAB-SDC\n");
            for (_, r) in &checks {
                rules.push_str(r);
            }
            rules.push_str("COMMIT\n");
            let out = self.vpc.sh_status(&format!(
                "printf '%s' '{rules}' | iptables-restore --noflush && (iptables -C FORWARD -j LAB-SDC 2>/dev/null || iptables -I FORWARD -j LAB-SDC)"
            ));
            if out.status.success() {
                self.checks = checks;
            }
        }
        // NAT gateways.
        let g = self
            .ec2
            .describe_nat_gateways()
            .filter(in_vpc())
            .send()
            .await
            .map_err(|e| format!("DescribeNatGateways: {e:?}"))?;
        let available: BTreeMap<String, (String, String, Option<String>)> = g
            .nat_gateways()
            .iter()
            .filter(|g| g.state().is_some_and(|s| s.as_str() == "available"))
            .map(|g| {
                let address = g.nat_gateway_addresses().first();
                (
                    g.nat_gateway_id().unwrap_or_default().to_string(),
                    (
                        address
                            .and_then(|a| a.private_ip())
                            .unwrap_or_default()
                            .to_string(),
                        address
                            .and_then(|a| a.public_ip())
                            .unwrap_or_default()
                            .to_string(),
                        g.subnet_id().map(str::to_string),
                    ),
                )
            })
            .collect();
        let old: Vec<String> = self
            .gateways
            .keys()
            .filter(|k| !available.contains_key(*k))
            .cloned()
            .collect();
        for id in old {
            if let Some(g) = self.gateways.remove(&id) {
                self.vpc.sh_status(&format!(
                    "ip link del {}; ip rule del from {} priority 950",
                    g.link, g.ip
                ));
            }
        }
        for (id, (ip, public, subnet)) in &available {
            if !self.gateways.contains_key(id) {
                self.gateway(id, ip, public, subnet.clone());
            }
        }
        // Routes: each private subnet follows its route table.
        let t = self
            .ec2
            .describe_route_tables()
            .filters(in_vpc())
            .send()
            .await
            .map_err(|e| format!("DescribeRouteTables: {e:?}"))?;
        let tables = t.route_tables();
        let routed: Vec<(String, u32, bool)> = self
            .subnets
            .iter()
            .enumerate()
            .map(|(n, s)| (s.clone(), 101 + n as u32, true))
            .chain(self.tables.iter().map(|(s, t)| (s.clone(), *t, false)))
            .collect();
        for (subnet, table_no, private) in &routed {
            let subnet = subnet.as_str();
            let table = tables
                .iter()
                .find(|t| {
                    t.associations()
                        .iter()
                        .any(|a| a.subnet_id() == Some(subnet))
                })
                .or_else(|| {
                    tables
                        .iter()
                        .find(|t| t.associations().iter().any(|a| a.main() == Some(true)))
                });
            let route = table.and_then(natd::aws::default_route);
            let hop = match route {
                None => "none".to_string(),
                Some(r) if r.state().is_some_and(|s| s.as_str() == "blackhole") => {
                    "blackhole".to_string()
                }
                Some(r) => {
                    if let Some(g) = r.nat_gateway_id() {
                        g.to_string()
                    } else if let Some(i) = r.instance_id() {
                        i.to_string()
                    } else if let Some(e) = r.network_interface_id() {
                        self.instances
                            .iter()
                            .find(|(_, i)| i.eni == e)
                            .map(|(id, _)| id.clone())
                            .unwrap_or_else(|| "blackhole".into())
                    } else if let Some(g) = r.gateway_id().filter(|g| g.starts_with("igw-")) {
                        g.to_string()
                    } else {
                        "none".to_string()
                    }
                }
            };
            if self.programmed.get(subnet).map(String::as_str) != Some(hop.as_str()) {
                if !self
                    .propagation
                    .due(&format!("route {subnet}"), &hop, Instant::now())
                {
                    continue;
                }
                let via = self
                    .instances
                    .get(&hop)
                    .map(|i| (i.ip.clone(), i.link.clone()))
                    .or_else(|| {
                        self.gateways
                            .get(&hop)
                            .map(|g| (g.ip.clone(), g.link.clone()))
                    })
                    .or_else(|| {
                        hop.starts_with("igw-")
                            .then(|| (IGW_INSIDE.to_string(), "igw0".to_string()))
                    });
                // A target the lab does not run yet (it appeared between this tick's
                // reads) keeps the current path for a few ticks, like AWS's route
                // propagation; one that never runs drops, like a blackhole.
                if via.is_none() && hop != "none" && hop != "blackhole" {
                    let waited = self.unknown.entry(subnet.to_string()).or_insert(0);
                    *waited += 1;
                    if *waited < 10 {
                        continue;
                    }
                }
                self.unknown.remove(subnet);
                let cmd = match (&via, hop.as_str()) {
                    (Some((ip, link)), _) => {
                        format!(
                            "ip route replace default via {ip} dev {link} onlink table {table_no}"
                        )
                    }
                    (None, "none") => format!("ip route flush table {table_no}"),
                    _ => format!("ip route replace blackhole default table {table_no}"),
                };
                if self.vpc.sh_status(&cmd).status.success() {
                    self.programmed.insert(subnet.to_string(), hop.clone());
                    if *private {
                        self.shared
                            .lock()
                            .unwrap()
                            .routes
                            .insert(subnet.to_string(), hop.clone());
                        self.event(Event::Route(subnet.to_string(), hop));
                    }
                }
            }
        }
        self.follow_ipv6(&subnets, tables);
        self.enforce().await
    }

    /// IPv6 for the private subnets: a subnet that has an IPv6 block gets its host an
    /// address in it (`::10`, the router `::1`), and its IPv6 routes by its route table:
    /// `::/0` to an egress-only gateway goes to the internet gateway's stand-in,
    /// anything else nowhere. The VPC's IPv6 is not translated: the internet sees the
    /// host's own address.
    fn follow_ipv6(
        &mut self,
        subnets: &aws_sdk_ec2::operation::describe_subnets::DescribeSubnetsOutput,
        tables: &[aws_sdk_ec2::types::RouteTable],
    ) {
        for (i, subnet) in self.subnets.clone().iter().enumerate() {
            let n = i + 1;
            let table_no = 100 + n;
            let block = subnets
                .subnets()
                .iter()
                .find(|s| s.subnet_id() == Some(subnet))
                .and_then(|s| {
                    s.ipv6_cidr_block_association_set().iter().find(|a| {
                        a.ipv6_cidr_block_state()
                            .and_then(|s| s.state())
                            .is_some_and(|s| s.as_str() == "associated")
                    })
                })
                .and_then(|a| a.ipv6_cidr_block())
                .and_then(|b| b.parse::<ipnet::Ipv6Net>().ok());
            let Some(ns) = self.private_ns.get(i).map(|n| borrowed(n)) else {
                continue;
            };
            let had = self.ipv6.get(subnet).cloned();
            if had.as_ref().map(|h| h.0.as_str()) != block.map(|b| b.to_string()).as_deref()
                && let Some((old, _)) = had
                && let Ok(old) = old.parse::<ipnet::Ipv6Net>()
            {
                let (host, router) = ipv6_hosts(old);
                ns.sh_status(&format!("ip -6 addr del {host}/64 dev eth0"));
                self.vpc.sh_status(&format!(
                    "ip -6 addr del {router}/64 dev s{n}; ip -6 rule del from {old} lookup {table_no}; ip -6 route flush table {table_no}"
                ));
                self.ipv6.remove(subnet);
            }
            let Some(block) = block else { continue };
            if !self.ipv6.contains_key(subnet) {
                let (host, router) = ipv6_hosts(block);
                let ok = self
                    .vpc
                    .sh_status(&format!(
                        "ip -6 addr add {router}/64 dev s{n} nodad && ip -6 rule add from {block} lookup {table_no} priority 1000"
                    ))
                    .status
                    .success()
                    && ns
                        .sh_status(&format!(
                            "ip -6 addr add {host}/64 dev eth0 nodad && ip -6 route add default via {router}"
                        ))
                        .status
                        .success();
                if !ok {
                    continue;
                }
                self.ipv6
                    .insert(subnet.clone(), (block.to_string(), "none".into()));
            }
            let table = tables
                .iter()
                .find(|t| {
                    t.associations()
                        .iter()
                        .any(|a| a.subnet_id() == Some(subnet.as_str()))
                })
                .or_else(|| {
                    tables
                        .iter()
                        .find(|t| t.associations().iter().any(|a| a.main() == Some(true)))
                });
            let hop = table
                .and_then(|t| {
                    t.routes().iter().find(|r| {
                        r.destination_ipv6_cidr_block() == Some(natd_contract::IPV6_DEFAULT_ROUTE)
                    })
                })
                .filter(|r| r.state().is_none_or(|s| s.as_str() != "blackhole"))
                .and_then(|r| r.egress_only_internet_gateway_id())
                .map_or("none", |_| "eigw");
            if self.ipv6.get(subnet).map(|h| h.1.as_str()) == Some(hop)
                || !self
                    .propagation
                    .due(&format!("route6 {subnet}"), hop, Instant::now())
            {
                continue;
            }
            let cmd = if hop == "eigw" {
                format!(
                    "ip -6 route replace default via {} dev igw0 table {table_no}",
                    ROUTER_IGW6.1
                )
            } else {
                format!("ip -6 route flush table {table_no}")
            };
            if self.vpc.sh_status(&cmd).status.success()
                && let Some(h) = self.ipv6.get_mut(subnet)
            {
                h.1 = hop.to_string();
            }
        }
    }

    /// Security groups and network ACLs from the emulator, enforced by the router
    /// ([`crate::vpc_policy`]); applied only when they changed.
    async fn enforce(&mut self) -> Result<(), String> {
        use crate::vpc_policy::{AclEntry, Group, Host, Permission, Policy};
        use aws_sdk_ec2::types::Filter;
        let in_vpc = || {
            Filter::builder()
                .name("vpc-id")
                .values(&self.vpc_id)
                .build()
        };
        let cidr: BTreeMap<String, String> = self
            .subnet_info
            .iter()
            .map(|(id, (c, _))| (id.clone(), c.clone()))
            .collect();
        let acls = self
            .ec2
            .describe_network_acls()
            .filters(in_vpc())
            .send()
            .await
            .map_err(|e| format!("DescribeNetworkAcls: {e:?}"))?;
        let mut policy = Policy::default();
        let mut acl_of: BTreeMap<String, String> = BTreeMap::new();
        let mut default_acl = None;
        for a in acls.network_acls() {
            let id = a.network_acl_id().unwrap_or_default().to_string();
            if a.is_default() == Some(true) {
                default_acl = Some(id.clone());
            }
            for s in a.associations() {
                if let Some(subnet) = s.subnet_id() {
                    acl_of.insert(subnet.to_string(), id.clone());
                }
            }
            let entries = a
                .entries()
                .iter()
                .filter(|e| e.cidr_block().is_some())
                .map(|e| AclEntry {
                    number: e.rule_number().unwrap_or(32767),
                    egress: e.egress().unwrap_or(false),
                    allow: e.rule_action().is_some_and(|r| r.as_str() == "allow"),
                    protocol: e.protocol().unwrap_or("-1").to_string(),
                    cidr: e.cidr_block().unwrap_or_default().to_string(),
                    ports: e
                        .port_range()
                        .map(|p| (p.from().unwrap_or(0), p.to().unwrap_or(65535))),
                })
                .collect();
            policy.acls.insert(id, entries);
        }
        let acl = |subnet: &str| acl_of.get(subnet).cloned().or(default_acl.clone());
        let groups = self
            .ec2
            .describe_security_groups()
            .filters(in_vpc())
            .send()
            .await
            .map_err(|e| format!("DescribeSecurityGroups: {e:?}"))?;
        let permissions = |perms: &[aws_sdk_ec2::types::IpPermission]| {
            perms
                .iter()
                .map(|p| Permission {
                    protocol: p.ip_protocol().unwrap_or("-1").to_string(),
                    ports: p.from_port().zip(p.to_port()),
                    cidrs: p
                        .ip_ranges()
                        .iter()
                        .filter_map(|r| r.cidr_ip().map(str::to_string))
                        .collect(),
                    groups: p
                        .user_id_group_pairs()
                        .iter()
                        .filter_map(|g| g.group_id().map(str::to_string))
                        .collect(),
                })
                .collect()
        };
        let mut default_group = None;
        for g in groups.security_groups() {
            let id = g.group_id().unwrap_or_default().to_string();
            if g.group_name() == Some("default") {
                default_group = Some(id.clone());
            }
            policy.groups.insert(
                id,
                Group {
                    ingress: permissions(g.ip_permissions()),
                    egress: permissions(g.ip_permissions_egress()),
                },
            );
        }
        let enis = self
            .ec2
            .describe_network_interfaces()
            .filters(in_vpc())
            .send()
            .await
            .map_err(|e| format!("DescribeNetworkInterfaces: {e:?}"))?;
        let mut eni_groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // The function's ENI in each subnet: the stand-in there carries its groups.
        let mut function_groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in enis.network_interfaces() {
            let ids: Vec<String> = n
                .groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_string))
                .collect();
            for g in &ids {
                let members = policy.members.entry(g.clone()).or_default();
                for a in n.private_ip_addresses() {
                    if let Some(ip) = a.private_ip_address() {
                        members.insert(ip.to_string());
                    }
                }
            }
            if n.description()
                .is_some_and(|d| d.starts_with("AWS Lambda VPC ENI"))
                && let Some(subnet) = n.subnet_id()
            {
                function_groups.insert(subnet.to_string(), ids.clone());
            }
            if let Some(id) = n.network_interface_id() {
                eni_groups.insert(id.to_string(), ids);
            }
        }
        let azs: BTreeMap<String, String> = self
            .subnet_info
            .iter()
            .map(|(id, (_, az))| (id.clone(), az.clone()))
            .collect();
        self.endpoints(&enis, &azs).await?;
        // The internet gateway translates every public address the VPC's interfaces
        // hold (a public IP given at launch, an Elastic IP) and the gateways' addresses.
        let mut translations = BTreeMap::new();
        for n in enis.network_interfaces() {
            // The interface's association is its primary address's; each address may
            // carry its own (an Elastic IP on a secondary address).
            if let (Some(private), Some(public)) = (
                n.private_ip_address(),
                n.association().and_then(|x| x.public_ip()),
            ) {
                translations.insert(private.to_string(), public.to_string());
            }
            for a in n.private_ip_addresses() {
                if let (Some(private), Some(public)) = (
                    a.private_ip_address(),
                    a.association().and_then(|x| x.public_ip()),
                ) {
                    translations.insert(private.to_string(), public.to_string());
                }
            }
        }
        for g in self.gateways.values() {
            translations.insert(g.ip.clone(), g.public.clone());
        }
        self.translate(translations)?;
        for (eni, (_, link)) in &self.endpoints {
            let Some(n) = enis
                .network_interfaces()
                .iter()
                .find(|n| n.network_interface_id() == Some(eni.as_str()))
            else {
                continue;
            };
            let subnet = n.subnet_id().unwrap_or_default();
            policy.hosts.push(Host {
                link: link.clone(),
                subnet_cidr: cidr.get(subnet).cloned().unwrap_or_default(),
                acl: acl(subnet),
                groups: Some(eni_groups.get(eni).cloned().unwrap_or_default()),
            });
        }
        for (n, subnet) in self.subnets.iter().enumerate() {
            let groups = function_groups
                .get(subnet)
                .cloned()
                .or_else(|| default_group.clone().map(|g| vec![g]))
                .unwrap_or_default();
            for g in &groups {
                policy
                    .members
                    .entry(g.clone())
                    .or_default()
                    .insert(format!("10.20.{}.10", n + 1));
            }
            policy.hosts.push(Host {
                link: format!("s{}", n + 1),
                subnet_cidr: cidr.get(subnet).cloned().unwrap_or_default(),
                acl: acl(subnet),
                groups: Some(groups),
            });
        }
        let extra = self.shared.lock().unwrap().extra.clone();
        for h in extra {
            let groups = match h.groups {
                Groups::Fixed(g) => g,
                Groups::Database(id) => self
                    .rds
                    .describe_db_instances()
                    .db_instance_identifier(&id)
                    .send()
                    .await
                    .map_err(|e| format!("DescribeDBInstances: {e:?}"))?
                    .db_instances()
                    .iter()
                    .flat_map(|d| d.vpc_security_groups())
                    .filter_map(|g| g.vpc_security_group_id().map(str::to_string))
                    .collect(),
            };
            for g in &groups {
                policy
                    .members
                    .entry(g.clone())
                    .or_default()
                    .insert(h.ip.clone());
            }
            policy.hosts.push(Host {
                link: h.link,
                subnet_cidr: cidr.get(&h.subnet).cloned().unwrap_or_default(),
                acl: acl(&h.subnet),
                groups: Some(groups),
            });
        }
        for i in self.instances.values() {
            policy.hosts.push(Host {
                link: i.link.clone(),
                subnet_cidr: cidr.get(&i.subnet).cloned().unwrap_or_default(),
                acl: acl(&i.subnet),
                groups: Some(eni_groups.get(&i.eni).cloned().unwrap_or_default()),
            });
        }
        for g in self.gateways.values() {
            // A regional gateway is in no subnet: no ACL; no gateway has groups.
            let subnet = g.subnet.clone().unwrap_or_default();
            policy.hosts.push(Host {
                link: g.link.clone(),
                subnet_cidr: cidr
                    .get(&subnet)
                    .cloned()
                    .unwrap_or_else(|| format!("{}/32", g.ip)),
                acl: g.subnet.as_ref().and_then(|s| acl(s)),
                groups: None,
            });
        }
        let (rules, chains) = crate::vpc_policy::ruleset(&policy, &self.policy.1);
        if rules == self.policy.0 {
            return Ok(());
        }
        let chain = crate::vpc_policy::CHAIN;
        let out = self.vpc.sh_status(&format!(
            "printf '%s' '{rules}' | iptables-restore --noflush && (iptables -C FORWARD -j {chain} 2>/dev/null || iptables -I FORWARD -j {chain})"
        ));
        if !out.status.success() {
            return Err(format!(
                "security groups and ACLs: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.policy = (rules, chains);
        Ok(())
    }

    /// Secrets Manager's interface endpoints: a host for each of their network
    /// interfaces in the lab's private subnets (at the interface's address, answering
    /// HTTPS's port with the emulator), and private DNS for the lab's hosts: with the
    /// endpoint's private DNS on and the VPC's DNS support and hostnames on, the
    /// service's name resolves to the endpoint (its interface in the host's AZ first);
    /// otherwise to the public side, on the internet.
    async fn endpoints(
        &mut self,
        enis: &aws_sdk_ec2::operation::describe_network_interfaces::DescribeNetworkInterfacesOutput,
        azs: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        use aws_sdk_ec2::types::{Filter, VpcAttributeName};
        let in_vpc = Filter::builder()
            .name("vpc-id")
            .values(&self.vpc_id)
            .build();
        let found = self
            .ec2
            .describe_vpc_endpoints()
            .filters(in_vpc)
            .send()
            .await
            .map_err(|e| format!("DescribeVpcEndpoints: {e:?}"))?;
        let mut private_dns = false;
        let mut wanted: BTreeMap<String, (String, String)> = BTreeMap::new();
        for e in found.vpc_endpoints() {
            let live = e.state().is_some_and(|s| {
                matches!(s.as_str().to_lowercase().as_str(), "available" | "pending")
            });
            if !live
                || !e
                    .service_name()
                    .is_some_and(|n| n.ends_with(".secretsmanager"))
            {
                continue;
            }
            private_dns |= e.private_dns_enabled() == Some(true);
            for id in e.network_interface_ids() {
                let Some(n) = enis
                    .network_interfaces()
                    .iter()
                    .find(|n| n.network_interface_id() == Some(id.as_str()))
                else {
                    continue;
                };
                let subnet = n.subnet_id().unwrap_or_default().to_string();
                if self.subnets.contains(&subnet) {
                    let ip = n.private_ip_address().unwrap_or_default().to_string();
                    wanted.insert(id.clone(), (ip, subnet));
                }
            }
        }
        self.endpoints.retain(|id, (_, link)| {
            let keep = wanted.contains_key(id);
            if !keep {
                let _ = self.vpc.sh_status(&format!("ip link del {link}"));
            }
            keep
        });
        for (id, (ip, subnet)) in &wanted {
            if self.endpoints.contains_key(id) {
                continue;
            }
            let (link, k) = self.new_link();
            let ns = Netns::new(&format!("e{k}"));
            // `wanted` holds only the lab's subnets.
            let n = self.subnets.iter().position(|s| s == subnet).unwrap_or(0);
            subnet_host(&self.vpc, &ns, ip, &link, n + 1);
            ns.forward(format!("{ip}:443").parse().unwrap(), self.emu.port);
            self.endpoints.insert(id.clone(), (ns, link));
        }
        // The VPC's resolver answers only with DNS support on; private DNS needs DNS
        // hostnames too.
        let mut dns = Vec::new();
        for a in [
            VpcAttributeName::EnableDnsSupport,
            VpcAttributeName::EnableDnsHostnames,
        ] {
            let r = self
                .ec2
                .describe_vpc_attribute()
                .vpc_id(&self.vpc_id)
                .attribute(a)
                .send()
                .await
                .map_err(|e| format!("DescribeVpcAttribute: {e:?}"))?;
            let on = r
                .enable_dns_support()
                .or(r.enable_dns_hostnames())
                .and_then(|v| v.value())
                .unwrap_or(false);
            dns.push(on);
        }
        let (support, hostnames) = (dns[0], dns[1]);
        let endpoint_ips: Vec<(String, String)> = wanted.values().cloned().collect();
        let hosts = self.shared.lock().unwrap().dns_hosts.clone();
        for (ns, subnet) in hosts {
            let target = if !support {
                String::new()
            } else if private_dns && hostnames && !endpoint_ips.is_empty() {
                endpoint_ips
                    .iter()
                    .find(|(_, s)| azs.get(s) == azs.get(&subnet))
                    .or(endpoint_ips.first())
                    .map(|(ip, _)| ip.clone())
                    .unwrap_or_default()
            } else {
                INTERNET.to_string()
            };
            // Without DNS support the name does not resolve at all.
            let content = if target.is_empty() {
                "127.0.0.1 localhost\n".to_string()
            } else {
                format!("127.0.0.1 localhost\n{target} {SECRETS_MANAGER}\n")
            };
            if self.resolved.get(&ns) != Some(&content) {
                let dir = format!("/etc/netns/{ns}");
                std::fs::create_dir_all(&dir).map_err(|e| format!("{dir}: {e}"))?;
                std::fs::write(format!("{dir}/hosts"), &content)
                    .map_err(|e| format!("{dir}: {e}"))?;
                // The lab's names are in the hosts file only: a name not there fails at
                // once instead of waiting on the machine's own resolver.
                std::fs::write(
                    format!("{dir}/resolv.conf"),
                    "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
                )
                .map_err(|e| format!("{dir}: {e}"))?;
                self.resolved.insert(ns, content);
            }
        }
        Ok(())
    }

    fn new_link(&mut self) -> (String, u32) {
        self.next_link += 1;
        (format!("n{}", self.next_link), self.next_link)
    }

    /// Links `ns` (interface `in0`, address `ip`) to the VPC router (interface `link`).
    fn inside(&self, ns: &Netns, ip: &str, link: &str) {
        attach(&self.vpc, ns, ip, link);
    }

    /// Programs the internet gateway's 1:1 translations (private address -> public),
    /// when they changed: a translated address reaches the internet and is reachable
    /// from it; other addresses do neither. Connections through a translation that
    /// went or changed are forgotten, as their packets now translate differently.
    fn translate(&mut self, wanted: BTreeMap<String, String>) -> Result<(), String> {
        if wanted == self.translations {
            return Ok(());
        }
        let mut nat = String::from("*nat\n-F IGW-PRE\n-F IGW-POST\n");
        let mut filter = String::from(
            "*filter\n-F IGW-FWD\n-A IGW-FWD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n",
        );
        let mut routes = String::new();
        for (private, public) in &wanted {
            nat.push_str(&format!(
                "-A IGW-PRE -i eth1 -d {public}/32 -j DNAT --to-destination {private}\n\
                 -A IGW-POST -o eth1 -s {private}/32 -j SNAT --to-source {public}\n"
            ));
            filter.push_str(&format!(
                "-A IGW-FWD -i in0 -o eth1 -s {private}/32 -j ACCEPT\n\
                 -A IGW-FWD -i eth1 -o in0 -d {private}/32 -j ACCEPT\n"
            ));
            if !private.starts_with("10.20.") {
                routes.push_str(&format!(
                    "ip route replace {private}/32 via {ROUTER} dev in0 onlink\n"
                ));
            }
        }
        nat.push_str("COMMIT\n");
        filter.push_str("-A IGW-FWD -j DROP\nCOMMIT\n");
        let out = self.igw.sh_status(&format!(
            "printf '%s' '{nat}{filter}' | iptables-restore --noflush\n{routes}"
        ));
        if !out.status.success() {
            return Err(format!(
                "internet gateway: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut forget = String::new();
        for (private, public) in &self.translations {
            if wanted.get(private) != Some(public) {
                forget.push_str(&format!(
                    "conntrack -D -s {private} 2>/dev/null; conntrack -D -d {public} 2>/dev/null; "
                ));
            }
        }
        if !forget.is_empty() {
            self.igw.sh_status(&format!("{forget}true"));
        }
        self.translations = wanted;
        Ok(())
    }

    /// natd's configuration from the instance's user data (the cloud-config natctl's
    /// launch template writes), without the stack (the lab writes its own keys).
    async fn user_config(&self, id: &str) -> String {
        let data = self
            .ec2
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .ok()
            .and_then(|r| r.user_data().and_then(|u| u.value()).map(str::to_string))
            .and_then(|b| aws_smithy_types::base64::decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let mut out = String::new();
        let mut inside = false;
        for line in data.lines() {
            if line.trim_start().starts_with("content: |") {
                inside = true;
            } else if inside && line.starts_with("      ") {
                let kv = line.trim();
                if !kv.starts_with("stack") {
                    out.push_str(kv);
                    out.push('\n');
                }
            } else {
                inside = false;
            }
        }
        out
    }

    /// Gives a running instance its namespace, IMDS fixture and natd.
    #[allow(clippy::too_many_arguments)]
    fn boot(
        &mut self,
        id: &str,
        stack: &str,
        eni: &str,
        mac: &str,
        ip: &str,
        subnet: &str,
        user_config: &str,
    ) {
        let (link, k) = self.new_link();
        let ns = Netns::new(&format!("i{k}"));
        // One interface, as on EC2: the ENI (its MAC, its private address) behind the
        // VPC router, which is also the way out; the internet gateway translates the
        // instance's public or Elastic IP.
        attach_dev(&self.vpc, &ns, "ens5", ip, &link);
        ns.sh(&format!(
            "ip link set ens5 address {mac} && ip route add default via {ROUTER} dev ens5 onlink"
        ));
        let local_ipv4s = self.dir.path().join(format!("{id}.local-ipv4s"));
        std::fs::write(&local_ipv4s, "").unwrap();
        let imds = self.emu.imds_with(id, Some(&local_ipv4s));
        ns.forward_loopback(imds.port);
        let config = self.dir.path().join(format!("{id}.toml"));
        let systemd = self.shared.lock().unwrap().systemd;
        // The ENA driver's statistics, as `ethtool -S` prints them: a stand-in file the
        // tests raise (Lab::set_ena); natd reads it instead of running ethtool.
        let ena = config.with_extension("ena");
        std::fs::write(&ena, ena_stats(&BTreeMap::new())).unwrap();
        let ena_in_natd = if systemd {
            crate::machine::ENA_IN_MACHINE.to_string()
        } else {
            ena.display().to_string()
        };
        std::fs::write(
            &config,
            format!(
                "stack = \"{stack}\"\nimds_endpoint = \"http://127.0.0.1:{}\"\naws_endpoint_url = \"http://{INTERNET}:{}\"\nena_stats_file = \"{ena_in_natd}\"\n{}{}{user_config}",
                imds.port,
                self.emu.port,
                if self.shared.lock().unwrap().as_deployed {
                    String::new()
                } else {
                    format!(
                        "interval_secs = 1\nunhealthy_after = 3\nprobe_targets = [\"{SERVER}\"]\nprobe_timeout_ms = 500\nstartup_attempts = 5\ncloudwatch_period_secs = 5\n"
                    )
                },
                if systemd {
                    // The unit's RuntimeDirectory, natd's default.
                    String::new()
                } else {
                    format!("state_dir = \"{}\"\n", self.dir.path().join(id).display())
                }
            ),
        )
        .unwrap();
        let log = self.dir.path().join(format!("{id}.log"));
        let mut i = Instance {
            machine: None,
            ns,
            _imds: imds,
            link,
            ip: ip.to_string(),
            secondary: BTreeSet::new(),
            local_ipv4s,
            eni: eni.to_string(),
            subnet: subnet.to_string(),
            natd: None,
            log: log.clone(),
            config,
            failures: Vec::new(),
            ready: false,
            gave_up: false,
        };
        if systemd {
            i.machine = Some(crate::machine::Machine::boot(
                &i.ns.name,
                &crate::bin("natd"),
                &i.config,
                &i.log,
                self.dir.path(),
            ));
        } else {
            start_natd(&mut i);
        }
        {
            let mut shared = self.shared.lock().unwrap();
            shared
                .instances
                .insert(id.to_string(), (i.ns.name.clone(), log));
            shared.links.insert(id.to_string(), i.link.clone());
        }
        self.instances.insert(id.to_string(), i);
        self.event(Event::Booted(id.to_string()));
    }

    /// A NAT gateway stand-in: masquerades the VPC to its private address and sends
    /// it on by its subnet's route table (a regional gateway, in no subnet, straight to
    /// the internet gateway), which translates its Elastic IP.
    fn gateway(&mut self, id: &str, ip: &str, public: &str, subnet: Option<String>) {
        let (link, k) = self.new_link();
        let ip = if ip.is_empty() {
            format!("10.20.0.{}", 200 + (k % 50))
        } else {
            ip.to_string()
        };
        let public = if public.is_empty() {
            format!("203.0.113.{}", 1 + (k % 250))
        } else {
            public.to_string()
        };
        let ns = Netns::new(&format!("g{k}"));
        self.inside(&ns, &ip, &link);
        ns.sh(&format!(
            "ip route add default via {ROUTER} dev in0 onlink && sysctl -qw net.ipv4.ip_forward=1\n\
             iptables -t nat -A POSTROUTING -s 10.20.0.0/16 ! -d 10.20.0.0/16 -j MASQUERADE"
        ));
        let table = subnet
            .as_ref()
            .and_then(|s| {
                let n = self.subnets.iter().position(|p| p == s);
                n.map(|n| 101 + n as u32).or(self.tables.get(s).copied())
            })
            .unwrap_or(IGW_TABLE);
        self.vpc.sh(&format!(
            "ip rule add from {ip} lookup {table} priority 950"
        ));
        self.gateways.insert(
            id.to_string(),
            Gateway {
                _ns: ns,
                link,
                ip,
                public,
                subnet,
            },
        );
        self.event(Event::GatewayUp(id.to_string()));
    }

    /// The supervisor, as the systemd unit: restart natd when it exits; after 5 exits
    /// within 5 minutes, or exit status 2, run `natd --report-unhealthy` once.
    fn supervise(&mut self) {
        let mut events = Vec::new();
        for (id, i) in &mut self.instances {
            if !i.ready
                && std::fs::read_to_string(&i.log).is_ok_and(|l| l.contains("forwarding ready"))
            {
                i.ready = true;
                events.push(Event::Ready(id.clone()));
            }
            if i.machine.is_some() {
                events.extend(machine_events(id, i));
                continue;
            }
            let Some(child) = i.natd.as_mut() else {
                continue;
            };
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            i.natd = None;
            let now = Instant::now();
            i.failures
                .retain(|t| now.duration_since(*t) < Duration::from_secs(300));
            i.failures.push(now);
            if status.code() == Some(2) || i.failures.len() >= 5 {
                if !i.gave_up {
                    i.gave_up = true;
                    let _ =
                        i.ns.command(&crate::bin("natd"))
                            .arg("--config")
                            .arg(&i.config)
                            .arg("--report-unhealthy")
                            .envs(natd_env())
                            .stdout(Stdio::null())
                            .stderr(log_file(&i.log))
                            .status();
                    events.push(Event::ReportedUnhealthy(id.clone()));
                }
            } else {
                start_natd(i);
                events.push(Event::Restarted(id.clone(), status.code()));
            }
        }
        for e in events {
            self.event(e);
        }
    }
}

/// Under systemd: what the instance's units did since last asked (systemd restarts
/// natd and runs the OnFailure= report; the lab only notes them, from the journal).
fn machine_events(id: &str, i: &mut Instance) -> Vec<Event> {
    let mut events = Vec::new();
    let Some(m) = i.machine.as_mut() else {
        return events;
    };
    let (restarts, reported) = std::fs::read_to_string(&i.log)
        .map(|l| crate::machine::unit_events(&l))
        .unwrap_or_default();
    for _ in m.restarts_seen..restarts {
        events.push(Event::Restarted(id.to_string(), None));
    }
    m.restarts_seen = m.restarts_seen.max(restarts);
    if reported && !m.reported {
        m.reported = true;
        events.push(Event::ReportedUnhealthy(id.to_string()));
    }
    events
}

fn natd_env() -> [(&'static str, &'static str); 3] {
    [
        ("AWS_ACCESS_KEY_ID", TEST_KEY.0),
        ("AWS_SECRET_ACCESS_KEY", TEST_KEY.1),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

fn log_file(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

fn start_natd(i: &mut Instance) {
    let child =
        i.ns.command(&crate::bin("natd"))
            .arg("--config")
            .arg(&i.config)
            .envs(natd_env())
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_PROFILE")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(log_file(&i.log))
            .spawn()
            .unwrap();
    i.natd = Some(child);
}

/// `ethtool -S` output of an ENA interface with `values` (the allowance counters natd
/// reads; those not given are 0, `conntrack_allowance_available` 100,000).
fn ena_stats(values: &BTreeMap<String, u64>) -> String {
    let mut out = String::from("NIC statistics:\n     tx_timeout: 0\n");
    for (driver, _) in natd_contract::metrics::ENA_ALLOWANCES {
        let default = if driver == "conntrack_allowance_available" {
            100_000
        } else {
            0
        };
        let v = values.get(driver).copied().unwrap_or(default);
        out.push_str(&format!("     {driver}: {v}\n"));
    }
    out
}
