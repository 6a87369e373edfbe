//! natd's two halves and how they meet.
//!
//! - The **data pass** ([`Agent::data_pass`]) runs every interval, locally: sysctls and
//!   natd's iptables chains (repaired when they drifted, the VPC's CIDRs as last read),
//!   the source/dest check as last read from EC2, and the probes. It never waits for AWS.
//! - The **control pass** ([`control_pass`]) talks to IMDS and AWS under its own
//!   deadline: it sends a due Unhealthy report first, re-reads the VPC's CIDRs, reads and
//!   repairs the source/dest check, and only when the data plane has just been verified
//!   to forward (make before break) takes over the tagged routes and the Elastic IP and
//!   completes the launch lifecycle action; then it publishes natd's health tag. It runs
//!   beside the data passes (the main loop polls both), and after a failure the next one
//!   waits with bounded exponential backoff.
//!
//! [`crate::health`] decides, without I/O, what the two halves' results mean: only
//! data-plane failures count towards Unhealthy.

use crate::aws::{self, Cloud, Membership};
use crate::config::Config;
use crate::contract::health::{self as health_report, HealthReport, HealthTag};
use crate::health::{ControlOutcome, Health, Note};
use crate::imds::{self, Identity, Imds};
use crate::kernel::apply::{self as kapply, Kernel};
use crate::kernel::{self, Facts, Ruleset, Sysctl};
use crate::metrics::{Metrics, Snapshot};
use crate::pair;
use crate::routes::{self, Decision, Me, Target};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// First wait between start-up attempts; doubles up to [`STARTUP_MAX_DELAY`], with jitter.
const STARTUP_MIN_DELAY: Duration = Duration::from_millis(500);
const STARTUP_MAX_DELAY: Duration = Duration::from_secs(10);
/// The health tag is rewritten when it changes, and at least this often, so that
/// `natctl status` can tell a silent natd from a quiet one.
pub const HEALTH_TAG_REFRESH: Duration =
    Duration::from_secs(crate::contract::HEALTH_TAG_REFRESH_SECS);

/// What decides how soon the next control pass runs after one that succeeded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cadence {
    /// The data plane has been verified to forward at least once.
    pub ever_ready: bool,
    /// No launch lifecycle action waits for us (completed, or none).
    pub launch_settled: bool,
    /// The pass just moved a route or an address.
    pub took_over: bool,
    /// Pair mode: the pair is not settled (no peer known, no recent heartbeat, no
    /// holder of the address, a fast-path move in the last minute).
    pub pair_unsettled: bool,
}

/// How long after a successful pass the next one runs: at the next tick (every
/// `interval`) until natd is settled, then `drift` with ±20 % jitter (`jitter` in 0..1 picks where), so that
/// passes of many instances spread out.
pub fn next_control_in(c: Cadence, interval: Duration, drift: Duration, jitter: f64) -> Duration {
    if !c.ever_ready || !c.launch_settled || c.took_over || c.pair_unsettled {
        return Duration::ZERO;
    }
    let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    drift.mul_f64(factor).max(interval)
}

/// A pair whose peer has been silent this long is not settled (ten missed beats at
/// the default 100 ms: well past a takeover's detection).
const PAIR_SILENCE_UNSETTLED: Duration = Duration::from_secs(1);
/// For this long after the fast path moved routes or addresses, the control pass runs
/// every tick to read the new state back.
const PAIR_MOVE_UNSETTLED: Duration = Duration::from_secs(60);

/// For this long after the peer changed (a replacement, or `natctl rotate`, which
/// replaces the standby and then tags the holder for a handover), the control pass
/// reads EC2 at every pass, so the holder sees its handover tag within a pass.
const PAIR_NEW_PEER_UNSETTLED: Duration = Duration::from_secs(600);

/// Why natd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// IMDS did not answer (after all attempts) or answered nonsense.
    #[error("cannot read instance identity: {0}")]
    Imds(#[from] imds::Error),
    /// The host does not match what IMDS says (no interface with the ENI's MAC).
    #[error("cannot inspect the host: {0}")]
    Host(#[from] kapply::Error),
    /// An AWS call failed.
    #[error("{0}")]
    Aws(#[from] aws::Error),
}

impl StartError {
    /// Whether retrying (a restart of natd) cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            StartError::Imds(imds::Error::Endpoint { .. }) => true,
            StartError::Aws(e) => e.is_permanent(),
            _ => false,
        }
    }
}

fn startup_backoff(cfg: &Config) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(STARTUP_MIN_DELAY)
        .with_max_delay(STARTUP_MAX_DELAY)
        .with_max_times(cfg.startup_attempts.saturating_sub(1) as usize)
        .with_jitter()
}

/// Reports this instance Unhealthy to its Auto Scaling group so the group replaces it:
/// what systemd runs (`natd --report-unhealthy`, from `natd-unhealthy.service`) when
/// natd itself keeps failing and cannot report from its own loop. Returns the group,
/// or `None` when the instance is in no group.
pub async fn report_unhealthy(cfg: &Config) -> Result<Option<String>, StartError> {
    let backoff = startup_backoff(cfg);
    let endpoint = cfg.imds_endpoint.clone();
    let id = (|| imds::identity(endpoint.as_deref()))
        .retry(backoff)
        .when(|e| !matches!(e, imds::Error::Endpoint { .. }))
        .await?;
    let sdk = crate::cloud::sdk_config(&id.region, cfg.aws_endpoint_url.as_deref()).await;
    let cloud = Cloud::new(&sdk);
    let Some(m) = (|| cloud.membership(&id.instance_id))
        .retry(backoff)
        .when(|e| !e.is_permanent())
        .await?
    else {
        return Ok(None);
    };
    (|| cloud.set_unhealthy(&id.instance_id))
        .retry(backoff)
        .when(|e| !e.is_permanent())
        .await?;
    Ok(Some(m.group))
}

/// The kernel half: everything natd checks and repairs without AWS.
#[derive(Debug)]
struct DataPlane {
    kernel: Kernel,
    facts: Facts,
    plan: Vec<Sysctl>,
    rules: Ruleset,
    probes: Vec<SocketAddrV4>,
    probe_timeout: Duration,
    passes: u64,
    skipped_logged: bool,
    conntrack_tool_missing_logged: bool,
    port_range: (u16, u16),
    pair: Option<PairPlane>,
    /// The kernel forwards new connections: the last apply succeeded with
    /// `facts.forward_new` on.
    open_applied: bool,
}

/// The data plane's share of pair mode: the overlay link and conntrackd follow the
/// peer, the SNAT rules follow the egress addresses.
#[derive(Debug)]
struct PairPlane {
    view: pair::Shared,
    sync: std::sync::Arc<pair::Sync>,
    overlay_port: u16,
    /// `(us, peer)` the overlay link was made for.
    overlay_for: Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
    /// conntrackd was (re)started: a standby asks the holder for its whole table.
    resync_due: bool,
    trouble: Option<String>,
}

impl DataPlane {
    /// One data-plane check: returns what is wrong after repairs (empty: it forwards).
    async fn check(&mut self, sdc: Option<bool>, eni: &str) -> Vec<String> {
        self.passes += 1;
        let first = self.passes == 1;
        let mut problems = Vec::new();
        self.follow_pair().await;
        match self.kernel.ensure(&self.plan, &self.rules).await {
            Ok(changes) => {
                self.open_applied = self.facts.forward_new;
                if let Some(p) = &self.pair {
                    p.view.lock().expect("pair view").kernel_egress = if self.facts.forward_new {
                        self.facts.egress_ips.clone()
                    } else {
                        Vec::new()
                    };
                }
                if changes.any() {
                    let what = describe_kernel_changes(&changes);
                    if first {
                        info!("kernel configured: {what}");
                    } else {
                        warn!("kernel drift repaired: {what}");
                    }
                }
                if !changes.skipped.is_empty() && !self.skipped_logged {
                    self.skipped_logged = true;
                    warn!(
                        "optional kernel settings not applied: {}",
                        changes.skipped.join("; ")
                    );
                }
            }
            Err(e) => problems.push(format!("kernel: {e}")),
        }
        if sdc == Some(true) {
            problems.push(format!(
                "source/dest check is on for {eni} (as last read from EC2): EC2 drops forwarded packets"
            ));
        }
        if !self.probes.is_empty() {
            let failed = self.probe_all().await;
            if failed.len() == self.probes.len() {
                problems.extend(failed);
            } else if !failed.is_empty() {
                // One unreachable target among several is that target's problem.
                warn!(
                    "probe(s) failed while others answered: {}",
                    failed.join("; ")
                );
            }
        }
        problems
    }

    /// Runs every probe at once; returns the failures, in words.
    async fn probe_all(&self) -> Vec<String> {
        let mut set = tokio::task::JoinSet::new();
        for (i, target) in self.probes.iter().enumerate() {
            let (target, iface, timeout) = (
                *target,
                self.facts.egress_interface.clone(),
                self.probe_timeout,
            );
            set.spawn(async move { (i, target, probe(target, &iface, timeout).await) });
        }
        let mut failed = Vec::new();
        while let Some(done) = set.join_next().await {
            if let Ok((i, target, Err(e))) = done {
                failed.push((
                    i,
                    format!("probe {target} via {}: {e}", self.facts.egress_interface),
                ));
            }
        }
        failed.sort();
        failed.into_iter().map(|(_, f)| f).collect()
    }

    /// Pair mode: SNAT to the egress addresses as last read, the overlay link and
    /// conntrackd to the peer as last read. Trouble here is logged (on change), not
    /// counted against health: it costs the fast takeover, not forwarding.
    async fn follow_pair(&mut self) {
        let Some(p) = self.pair.as_mut() else { return };
        let (ips, ends, holder) = {
            let v = p.view.lock().expect("pair view");
            (
                // Until EC2 has been read, what the previous run left.
                if v.egress_read {
                    v.egress_ips()
                } else {
                    self.facts.egress_ips.clone()
                },
                v.me_ip.zip(v.peer.as_ref().map(|p| p.ip)),
                v.holder,
            )
        };
        let mut changed = false;
        if ips != self.facts.egress_ips {
            if ips.is_empty() {
                warn!(
                    "the pair's egress addresses are unknown: forwarding no new connection (they would leave by another public address)"
                );
            } else {
                info!("SNAT to the egress address(es) [{}]", joined(&ips, ", "));
            }
            self.facts.forward_new = !ips.is_empty();
            self.facts.egress_ips = ips;
            changed = true;
        }
        let mut trouble = Vec::new();
        if let Some((me, peer)) = ends {
            let missing = if p.overlay_for == Some((me, peer)) {
                pair::overlay_missing().await
            } else {
                Vec::new()
            };
            if !missing.is_empty() {
                warn!(
                    "pair: the VXLAN link's {} was gone (a networkd reload removes rules it did not make); restoring it",
                    missing.join(", ")
                );
            }
            if p.overlay_for != Some((me, peer)) || !missing.is_empty() {
                match pair::ensure_overlay(&self.facts.egress_interface, me, peer, p.overlay_port)
                    .await
                {
                    Ok(net) => {
                        info!("pair: VXLAN link {} to {peer} ({net})", pair::OVERLAY_DEV);
                        p.overlay_for = Some((me, peer));
                        if self.facts.overlay.as_ref().map(|o| o.1) != Some(net) {
                            self.facts.overlay = Some((pair::OVERLAY_DEV.to_string(), net));
                            changed = true;
                        }
                    }
                    Err(e) => trouble.push(e),
                }
            }
            match p.sync.ensure(&self.facts.egress_interface, me, peer).await {
                Ok(true) => {
                    info!("pair: conntrackd syncing with {peer}");
                    p.resync_due = true;
                }
                Ok(false) if p.resync_due => {
                    // A standby asks the holder for its whole table. A holder whose
                    // conntrackd was (re)started (natd restarted, an upgrade, conntrackd
                    // died) reads the kernel's table again and sends all of it: the
                    // standby's copy of the connections that existed before must not
                    // wait for them to change.
                    let steps: &[&[&str]] = if holder {
                        &[&["-R"], &["-B"]]
                    } else {
                        &[&["-n"]]
                    };
                    let mut done = true;
                    for step in steps {
                        if let Err(e) = p.sync.ctl(step).await {
                            trouble.push(e);
                            done = false;
                            break;
                        }
                    }
                    if done {
                        if holder {
                            info!("pair: conntrackd sent the whole table to the standby");
                        }
                        p.resync_due = false;
                    }
                }
                Ok(false) => {}
                Err(e) => trouble.push(e),
            }
        }
        let ready = ends.is_some()
            && p.overlay_for == ends
            && pair::overlay_missing().await.is_empty()
            && p.sync.running().await;
        if ready {
            // Every pass: the holder's count rides on its heartbeats, and the standby
            // measures its copy against it.
            let (held, synced) = p.sync.cache_entries().await;
            let now = Instant::now();
            let (before, lag, ask) = {
                let mut v = p.view.lock().expect("pair view");
                (v.held, v.synced) = (held, synced);
                let before = v.lag;
                v.lag = if holder {
                    pair::SyncLag::Unknown
                } else {
                    pair::sync_lag(v.peer_held, synced, before, now)
                };
                let ask = pair::resync_due(v.lag, v.resync_asked, now);
                if ask {
                    v.resync_asked = Some(now);
                }
                (before, v.lag, ask)
            };
            if ask && let Some((entries, behind)) = lag.amount(now) {
                warn!(
                    "pair: the standby's copy is {entries} connection(s) behind the holder's table for {}s (the sync channel, UDP {}, lost or delayed updates): asking the holder for a full resync",
                    behind.as_secs(),
                    p.sync.port()
                );
                if let Err(e) = p.sync.ctl(&["-n"]).await {
                    trouble.push(e);
                }
            }
            if matches!(before, pair::SyncLag::Behind { .. }) && lag == pair::SyncLag::InStep {
                info!("pair: the standby's copy is in step with the holder's table again");
            }
        }
        p.view.lock().expect("pair view").ready = ready;
        let trouble = (!trouble.is_empty()).then(|| trouble.join("; "));
        if trouble != p.trouble {
            match &trouble {
                Some(t) => warn!("pair: {t} (forwarding is not affected; the fast takeover is)"),
                None if p.trouble.is_some() => info!("pair: state sync and overlay in order again"),
                None => {}
            }
            p.trouble = trouble;
        }
        if changed {
            self.rules = kernel::ruleset(&self.facts);
        }
    }

    /// Single instance with an Elastic IP: new connections are forwarded only while the
    /// address is on our ENI (else they would leave by the instance's own public IP).
    fn set_forward_new(&mut self, open: bool) {
        if self.facts.forward_new == open {
            return;
        }
        if open {
            info!("the Elastic IP is on this instance: forwarding new connections");
        } else {
            warn!(
                "the Elastic IP is not on this instance: forwarding no new connection (it would leave by another public address)"
            );
        }
        self.facts.forward_new = open;
        self.rules = kernel::ruleset(&self.facts);
    }

    /// Adopts a new set of VPC CIDRs: the ruleset is rebuilt; the next check applies it.
    fn set_cidrs(&mut self, cidrs: Vec<Ipv4Net>) {
        self.facts.vpc_cidrs = cidrs;
        self.rules = kernel::ruleset(&self.facts);
    }
}

/// One TCP connect to `target`, leaving by `iface`.
async fn probe(target: SocketAddrV4, iface: &str, timeout: Duration) -> Result<(), String> {
    crate::probe::connect(target, iface, timeout)
        .await
        .map_err(|e| e.to_string())
}

/// The AWS half: everything natd does through IMDS, EC2 and Auto Scaling. Moved into
/// the control pass's future while it runs, and back when it ends.
#[derive(Debug)]
pub struct ControlPlane {
    cfg: Config,
    id: Identity,
    cloud: Cloud,
    imds: Imds,
    launch_time: Option<i64>,
    cidrs: Vec<Ipv4Net>,
    decisions: BTreeMap<String, Decision>,
    membership: Option<Option<Membership>>,
    launch_completed: bool,
    passes: u64,
    published: Option<(HealthReport, Instant)>,
    ever_ready: bool,
    pair: Option<pair::Shared>,
    sync: Option<std::sync::Arc<pair::Sync>>,
}

/// What a control pass is told.
#[derive(Debug, Clone, Default)]
pub struct ControlInput {
    /// The data plane has just been verified to forward: routes may move here.
    pub forwards: bool,
    /// The kernel forwards new connections (a single instance with an Elastic IP: once
    /// the address is ours and the kernel opened): routes may move here.
    pub egress_open: bool,
    /// The Unhealthy report is due.
    pub report_unhealthy: bool,
    /// The health report to publish (without its timestamp).
    pub health: HealthReport,
    /// This pass reads EC2 and Auto Scaling (else IMDS only).
    pub aws: bool,
}

/// What a control pass found and did.
#[derive(Debug, Clone, Default)]
pub struct ControlReport {
    /// Calls that failed, in words.
    pub problems: Vec<String>,
    /// A failure no retry fixes (permissions) before natd was ever ready.
    pub fatal: Option<String>,
    /// The source/dest check as read (after repair), when EC2 answered.
    pub sdc: Option<bool>,
    /// The VPC's CIDRs, when IMDS answered.
    pub cidrs: Option<Vec<Ipv4Net>>,
    /// Route tables held and yielded, when EC2 answered.
    pub routes: Option<(usize, usize)>,
    /// A route was taken from another target in this pass.
    pub took_over: bool,
    /// The due Unhealthy report was sent (or there is no group).
    pub reported: bool,
    /// The pass hit its deadline.
    pub timed_out: bool,
    /// The pass read EC2 and Auto Scaling (else IMDS only).
    pub aws: bool,
    /// A single instance that requires its Elastic IP: whether the address is on our
    /// ENI, when EC2 answered.
    pub eip_on_us: Option<bool>,
}

/// Runs one control pass on `cp` within `deadline`; gives `cp` back with the report.
pub async fn control_pass(
    mut cp: ControlPlane,
    input: ControlInput,
    deadline: Duration,
) -> (ControlPlane, ControlReport) {
    let mut report = ControlReport::default();
    if tokio::time::timeout(deadline, cp.pass(&input, &mut report))
        .await
        .is_err()
    {
        report.timed_out = true;
        report.problems.push(format!(
            "control pass stopped at its deadline ({deadline:?}); AWS or IMDS too slow"
        ));
    }
    (cp, report)
}

impl ControlPlane {
    async fn pass(&mut self, input: &ControlInput, report: &mut ControlReport) {
        self.passes += 1;
        if input.report_unhealthy {
            self.send_unhealthy(report).await;
        }
        match self.imds.vpc_cidrs(&self.id.mac).await {
            Ok(c) => report.cidrs = Some(c),
            Err(e) => report.problems.push(format!("IMDS: {e}")),
        }
        report.aws = input.aws;
        if !input.aws {
            return;
        }
        let Some(sdc_off) = self.ensure_source_dest_check(report).await else {
            return;
        };
        if input.forwards && sdc_off {
            // Make before break: routes and the address move only to an instance that
            // has just been verified to forward.
            if self.pair.is_some() {
                self.ensure_pair(true, report).await;
            } else if self.ensure_me(report).await {
                if self.requires_eip() {
                    // The address first, then the routes, once the kernel forwards new
                    // connections (by the address): no connection leaves by another.
                    let on = self.ensure_address(report).await;
                    report.eip_on_us = Some(on);
                    if on && input.egress_open {
                        self.ensure_routes(report, None).await;
                    }
                } else {
                    self.ensure_routes(report, None).await;
                    self.ensure_address(report).await;
                }
            }
            if report.problems.is_empty() {
                self.complete_launch(report).await;
            }
        }
        if self.pair.is_some() && !(input.forwards && sdc_off) {
            // The standby-to-be still learns its peer and the addresses.
            self.ensure_pair(false, report).await;
        }
        if report.problems.is_empty() && input.forwards {
            self.ever_ready = true;
        }
        if self.cfg.publish_health {
            self.publish(&input.health, report).await;
        }
    }

    fn note(&self, report: &mut ControlReport, what: &str, e: &aws::Error) {
        if e.is_permanent() && !self.ever_ready && report.fatal.is_none() {
            report.fatal = Some(format!("{what}: {e}"));
        }
        report.problems.push(format!("{what}: {e}"));
    }

    async fn send_unhealthy(&mut self, report: &mut ControlReport) {
        match self.membership().await {
            Ok(Some(m)) => match self.cloud.set_unhealthy(&self.id.instance_id).await {
                Ok(()) => {
                    error!(
                        "reported Unhealthy to {} for replacement: the data plane keeps failing",
                        m.group
                    );
                    report.reported = true;
                }
                Err(e) => self.note(report, "report Unhealthy", &e),
            },
            Ok(None) => {
                error!(
                    "the data plane keeps failing and no Auto Scaling group can replace this instance"
                );
                report.reported = true;
            }
            Err(e) => self.note(report, "report Unhealthy", &e),
        }
    }

    /// Reads the source/dest check and turns it off when on. `Some(off)` when EC2
    /// answered.
    async fn ensure_source_dest_check(&mut self, report: &mut ControlReport) -> Option<bool> {
        let eni = self.id.eni_id.clone();
        let first = self.passes == 1;
        match self.cloud.source_dest_check(&eni).await {
            Ok(false) => {
                report.sdc = Some(false);
                Some(true)
            }
            Ok(true) => {
                let fixed = async {
                    self.cloud.disable_source_dest_check(&eni).await?;
                    self.cloud.source_dest_check(&eni).await
                }
                .await;
                match fixed {
                    Ok(on) => {
                        report.sdc = Some(on);
                        match (on, first) {
                            (false, true) => info!("source/dest check disabled on {eni}"),
                            (false, false) => {
                                warn!("source/dest check was on again on {eni}; disabled")
                            }
                            (true, _) => report.problems.push(format!(
                                "source/dest check on {eni} still on after disabling it"
                            )),
                        }
                        Some(!on)
                    }
                    Err(e) => {
                        report.sdc = Some(true);
                        self.note(report, "source/dest check", &e);
                        Some(false)
                    }
                }
            }
            Err(e) => {
                self.note(report, "source/dest check", &e);
                None
            }
        }
    }

    /// Our launch time, read once (the route rule ranks instances by it).
    async fn ensure_me(&mut self, report: &mut ControlReport) -> bool {
        if self.launch_time.is_some() {
            return true;
        }
        match self.cloud.me(&self.id.instance_id).await {
            Ok(h) => {
                self.launch_time = Some(h.launch_time);
                true
            }
            Err(e) => {
                self.note(report, "instance", &e);
                false
            }
        }
    }

    fn me(&self) -> Me {
        Me {
            instance_id: self.id.instance_id.clone(),
            eni_id: self.id.eni_id.clone(),
            launch_time: self.launch_time.unwrap_or(0),
            stack: self.cfg.stack.clone(),
        }
    }

    /// Pair mode: learns the peer, the egress addresses and the tables; claims an
    /// address no one holds (`ready`: we forward), holds what the holder holds, and
    /// takes or yields the routes by the pair's rule (see [`crate::pair`]).
    async fn ensure_pair(&mut self, ready: bool, report: &mut ControlReport) {
        let Some(view) = self.pair.clone() else {
            return;
        };
        let started = Instant::now();
        let stack = self.cfg.stack.clone();
        let (members, egress, tables) = match tokio::try_join!(
            self.cloud.stack_instances(&self.id.vpc_id, &stack),
            self.cloud.egress_addresses(&stack),
            self.cloud
                .egress_tables(&self.id.vpc_id, &stack, &self.cfg.route_tables),
        ) {
            Ok(r) => r,
            Err(e) => return self.note(report, "pair", &e),
        };
        // Every tagged address is used: natctl adds addresses to a running pair.
        let mut egress = egress;
        let me_id = self.id.instance_id.clone();
        let eni = self.id.eni_id.clone();
        let peer = pair::choose_peer(&members, &me_id, &egress);
        let me_ip = members
            .iter()
            .find(|m| m.instance_id == me_id)
            .map(|m| m.ip);
        if egress.is_empty() {
            report.problems.push(format!(
                "pair: no Elastic IP tagged {}={stack}: the pair's egress address is missing (natctl setup allocates it)",
                crate::contract::EGRESS_TAG
            ));
        } else if egress.len() < self.cfg.egress_ips as usize {
            warn!(
                "pair: {} Elastic IP(s) tagged {}={stack}, egress_ips = {}",
                egress.len(),
                crate::contract::EGRESS_TAG,
                self.cfg.egress_ips
            );
        }
        let lock = egress.first().and_then(|e| e.eni.clone());
        let read_holder = lock.as_deref() == Some(eni.as_str());
        let read_peer_holds = peer
            .as_ref()
            .is_some_and(|p| lock.as_deref() == Some(p.eni.as_str()));
        let window = self.cfg.consistency_window();
        let belief = {
            let v = view.lock().expect("pair view");
            let b = pair::believe(read_holder, read_peer_holds, started, &v, window);
            if b == pair::Belief::OursNotYetRead && !v.egress.is_empty() {
                // What we moved, as we moved it: the read does not show it yet.
                egress = v.egress.clone();
            }
            b
        };
        if belief != pair::Belief::Read {
            debug!("pair: EC2's read does not show the latest move yet ({belief:?})");
        }
        let mut holder = match belief {
            pair::Belief::Read => read_holder,
            pair::Belief::OursNotYetRead => true,
            pair::Belief::PeersNotYetRead => false,
        };
        // Tables the holder read on the peer: taken back only once reads can show who
        // holds (the peer may have taken over, and the address read lag behind).
        let on_peer = holder
            && peer
                .as_ref()
                .is_some_and(|p| tables.iter().any(|t| pair::on_peer(t, p)));
        let take_from_peer = {
            let mut v = view.lock().expect("pair view");
            if on_peer {
                v.peer_route_seen.get_or_insert(started);
            } else {
                v.peer_route_seen = None;
            }
            !on_peer || pair::may_take_from_peer(v.peer_route_seen, started, window)
        };
        if belief == pair::Belief::Read && ready && !holder && lock.is_none() && !egress.is_empty()
        {
            let claim = {
                let v = view.lock().expect("pair view");
                pair::should_claim(&me_id, peer.as_ref(), &v, Instant::now(), &self.cfg)
            };
            if claim {
                match self.claim(&mut egress).await {
                    Ok(won) => {
                        holder = won;
                        if won {
                            view.lock().expect("pair view").moved_here = Some(Instant::now());
                        }
                    }
                    Err(e) => self.note(report, "pair: claim the egress address", &e),
                }
            }
        }
        if ready
            && holder
            && take_from_peer
            && let Err(e) = self.hold_all(&mut egress).await
        {
            self.note(report, "pair: egress addresses", &e);
        }
        let lock = egress.first().and_then(|e| e.eni.clone());
        let peer_holds = belief == pair::Belief::PeersNotYetRead
            || peer
                .as_ref()
                .is_some_and(|p| lock.as_deref() == Some(p.eni.as_str()));
        // A planned handover (natctl rotate tags the holder): once the standby is heard
        // and forwards, send it the whole state, then say so in the heartbeats.
        let asked = holder && members.iter().any(|m| m.instance_id == me_id && m.handover);
        let start_handover = {
            let v = view.lock().expect("pair view");
            asked
                && !v.handing_over
                && v.peer_says_forwards
                && v.silence(Instant::now())
                    .is_some_and(|s| s < self.cfg.heartbeat_interval() * self.cfg.heartbeat_misses)
        };
        if start_handover {
            if let Some(sync) = &self.sync
                && let Err(e) = sync.ctl(&["-B"]).await
            {
                warn!("pair: could not send the state before the handover: {e}");
            }
            info!(
                "pair: handing over to {} (asked by {})",
                peer.as_ref()
                    .map(|p| p.instance_id.as_str())
                    .unwrap_or("the peer"),
                crate::contract::HANDOVER_TAG
            );
            view.lock().expect("pair view").handing_over = true;
        }
        {
            let mut v = view.lock().expect("pair view");
            let fast_path_since = v.took_at.is_some_and(|t| t >= started);
            if fast_path_since {
                // The heartbeat loop took over while this pass was reading: its view wins.
                holder = true;
            } else {
                if v.holder && !holder && peer_holds && v.handing_over {
                    info!(
                        "pair: handed over to {}; standing by",
                        peer.as_ref()
                            .map(|p| p.instance_id.as_str())
                            .unwrap_or("the peer")
                    );
                    v.handing_over = false;
                } else if v.holder && !holder && peer_holds {
                    warn!(
                        "pair: {} took the egress address over; standing by (no fast takeover until it is heard again)",
                        peer.as_ref()
                            .map(|p| p.instance_id.as_str())
                            .unwrap_or("the peer")
                    );
                    v.lost_role = v.silence(Instant::now()).is_none_or(|s| {
                        s > self.cfg.heartbeat_interval() * self.cfg.heartbeat_misses
                    });
                    v.lost_role_at = Some(Instant::now());
                }
                if v.peer.as_ref().map(|p| &p.instance_id) != peer.as_ref().map(|p| &p.instance_id)
                {
                    match &peer {
                        Some(p) => info!("pair: peer is {} ({})", p.instance_id, p.ip),
                        None => warn!("pair: no peer instance running"),
                    }
                    v.last_beat = None;
                    v.last_check_ok = None;
                    v.check_failures = 0;
                    v.not_acted = None;
                    // The link still leads to the previous peer until the data pass
                    // rebuilds it: no check through it until then.
                    v.ready = false;
                    v.silent_logged = false;
                    v.peer_says_holder = false;
                    v.peer_claim_heard = None;
                }
                if v.holder != holder || !v.role_logged {
                    v.role_logged = true;
                    info!(
                        "pair: {}",
                        if holder {
                            "holder of the egress address"
                        } else {
                            "standby"
                        }
                    );
                }
                v.holder = holder;
                v.peer_holds = peer_holds;
                v.egress = egress.clone();
                v.egress_read = true;
            }
            if v.peer.as_ref().map(|p| &p.instance_id) != peer.as_ref().map(|p| &p.instance_id) {
                v.peer_since = Some(Instant::now());
            }
            v.peer = peer.clone();
            v.me_ip = me_ip;
            v.tables = tables.iter().map(|t| t.id.clone()).collect();
        }
        // Routes come to the holder only once its kernel SNATs new connections to the
        // egress address (the first claim, a restart with nothing left in the kernel):
        // no connection leaves by another public address.
        let snat_ready = {
            let v = view.lock().expect("pair view");
            egress
                .first()
                .and_then(|e| e.private_ip)
                .is_some_and(|ip| v.kernel_egress.contains(&ip))
        };
        if ready && holder && !snat_ready {
            info!("pair: holder; the routes wait until the kernel SNATs to the egress address");
        } else if ready {
            self.ensure_routes(report, Some((holder, peer, tables, take_from_peer)))
                .await;
        }
    }

    /// Claims unheld egress addresses onto our ENI: a secondary private address for
    /// each, then AssociateAddress without reassociation, the lock a second claimant
    /// loses. `Ok(false)`: the other instance won.
    async fn claim(&mut self, egress: &mut [pair::Egress]) -> Result<bool, aws::Error> {
        let eni = self.id.eni_id.clone();
        let mine = self.cloud.secondary_ips(&eni).await?;
        let carrying: Vec<std::net::Ipv4Addr> = egress
            .iter()
            .filter(|e| e.eni.as_deref() == Some(eni.as_str()))
            .filter_map(|e| e.private_ip)
            .collect();
        let mut free: Vec<std::net::Ipv4Addr> = mine
            .into_iter()
            .filter(|ip| !carrying.contains(ip))
            .collect();
        let needed = egress
            .iter()
            .filter(|e| e.eni.as_deref() != Some(eni.as_str()))
            .count();
        let mut added = Vec::new();
        if free.len() < needed {
            added = self
                .cloud
                .new_private_ips(&eni, needed - free.len())
                .await?;
            free.extend(added.iter().copied());
        }
        for e in egress
            .iter_mut()
            .filter(|e| e.eni.as_deref() != Some(eni.as_str()))
        {
            let ip = free.remove(0);
            match self
                .cloud
                .associate_address_at(&e.allocation_id, &eni, ip, false)
                .await
            {
                Ok(()) => {
                    info!(
                        "pair: claimed Elastic IP {} ({}) on {eni} {ip}",
                        e.public_ip, e.allocation_id
                    );
                    e.eni = Some(eni.clone());
                    e.private_ip = Some(ip);
                }
                Err(err) if err.code() == Some("Resource.AlreadyAssociated") => {
                    info!(
                        "pair: Elastic IP {} was claimed by the other instance first; standing by",
                        e.public_ip
                    );
                    if !added.is_empty() {
                        let _ = self.cloud.release_private_ips(&eni, &added).await;
                    }
                    return Ok(false);
                }
                Err(err) => return Err(err),
            }
        }
        Ok(true)
    }

    /// The holder holds every egress address: one on the other ENI moves here (with
    /// its Elastic IP), an unassociated one is associated to a new address of ours.
    async fn hold_all(&mut self, egress: &mut [pair::Egress]) -> Result<(), aws::Error> {
        if egress
            .iter()
            .all(|e| e.eni.as_deref() == Some(self.id.eni_id.as_str()) && e.private_ip.is_some())
        {
            return Ok(());
        }
        let how = pair::bring_egress_here(&self.cloud, &self.id.eni_id, egress).await?;
        info!("pair: {how}");
        Ok(())
    }

    async fn ensure_routes(
        &mut self,
        report: &mut ControlReport,
        pair: Option<(bool, Option<pair::Member>, Vec<routes::Table>, bool)>,
    ) {
        let me = self.me();
        let decisions = if let Some((holder, peer, tables, take_from_peer)) = pair {
            pair::route_plan(&me, &tables, holder, peer.as_ref(), take_from_peer)
        } else {
            let tables = match self
                .cloud
                .egress_tables(&self.id.vpc_id, &self.cfg.stack, &self.cfg.route_tables)
                .await
            {
                Ok(t) => t,
                Err(e) => return self.note(report, "routes", &e),
            };
            let holders = match self.resolve_holders(&me, &tables).await {
                Ok(h) => h,
                Err(e) => return self.note(report, "routes", &e),
            };
            routes::plan(&me, &tables, &holders)
        };
        let writes: Vec<(String, Decision)> = decisions
            .iter()
            .filter(|(_, d)| matches!(d, Decision::Create | Decision::Replace { .. }))
            .map(|(t, d)| (t.clone(), d.clone()))
            .collect();
        // Every table at once: on a takeover each table's gap ends with its own call.
        let results = {
            let cloud = &self.cloud;
            let eni = &self.id.eni_id;
            let calls = writes.iter().map(|(table, d)| async move {
                (
                    table.clone(),
                    cloud.write_route(table, eni, *d == Decision::Create).await,
                )
            });
            futures_util::future::join_all(calls).await
        };
        let mut written = BTreeMap::new();
        for (table, result) in results {
            written.insert(table, result);
        }
        let mut held = Vec::new();
        let mut now = BTreeMap::new();
        for (table, decision) in decisions {
            if let Some(result) = written.remove(&table) {
                if let Err(e) = result {
                    self.note(report, "routes", &e);
                    continue;
                }
                let was = match &decision {
                    Decision::Replace {
                        from,
                        blackhole: true,
                    } => format!(" (was blackhole to {from})"),
                    Decision::Replace { from, .. } => format!(" (was {from})"),
                    _ => " (created)".to_string(),
                };
                if matches!(decision, Decision::Replace { .. }) {
                    report.took_over = true;
                }
                info!(
                    "route table {table}: 0.0.0.0/0 now targets {}{was}",
                    self.id.eni_id
                );
                held.push(table.clone());
                now.insert(table, Decision::Ours);
                continue;
            }
            if self.decisions.get(&table) != Some(&decision) {
                match &decision {
                    Decision::Yield { holder } => {
                        if self.pair.is_some() {
                            info!("route table {table}: natd {holder} holds 0.0.0.0/0; standing by")
                        } else {
                            info!(
                                "route table {table}: newer natd {holder} holds 0.0.0.0/0; standing by"
                            )
                        }
                    }
                    Decision::Ours if !self.decisions.contains_key(&table) => {
                        info!(
                            "route table {table}: 0.0.0.0/0 already targets {}",
                            self.id.eni_id
                        )
                    }
                    _ => {}
                }
            }
            if decision == Decision::Ours {
                held.push(table.clone());
            }
            now.insert(table, decision);
        }
        for gone in self.decisions.keys().filter(|t| !now.contains_key(*t)) {
            info!(
                "route table {gone}: no longer tagged {}={}; left alone",
                crate::contract::EGRESS_TAG,
                self.cfg.stack
            );
        }
        let yielded = now
            .values()
            .filter(|d| matches!(d, Decision::Yield { .. }))
            .count();
        report.routes = Some((held.len(), yielded));
        if self.decisions.is_empty() && !now.is_empty() || now != self.decisions {
            info!(
                "holding {} route table(s) [{}], {} held by a newer natd",
                held.len(),
                held.join(", "),
                yielded
            );
        }
        self.decisions = now;
    }

    /// Maps route targets that are not ours to the instance behind them.
    async fn resolve_holders(
        &self,
        me: &Me,
        tables: &[routes::Table],
    ) -> Result<BTreeMap<Target, routes::Holder>, aws::Error> {
        let targets = routes::targets_to_resolve(me, tables);
        if targets.is_empty() {
            return Ok(BTreeMap::new());
        }
        let enis: Vec<String> = targets
            .iter()
            .filter_map(|t| match t {
                Target::Interface(e) => Some(e.clone()),
                _ => None,
            })
            .collect();
        let owners = self.cloud.eni_owners(&enis).await?;
        let mut instance_of: BTreeMap<Target, String> = BTreeMap::new();
        for t in &targets {
            match t {
                Target::Interface(e) => {
                    if let Some(i) = owners.get(e) {
                        instance_of.insert(t.clone(), i.clone());
                    }
                }
                Target::Instance(i) => {
                    instance_of.insert(t.clone(), i.clone());
                }
                Target::Other(_) => {}
            }
        }
        let ids: Vec<String> = instance_of.values().cloned().collect();
        let holders = self.cloud.holders(&ids).await?;
        Ok(instance_of
            .into_iter()
            .filter_map(|(t, i)| holders.get(&i).map(|h| (t, h.clone())))
            .collect())
    }

    /// A single instance whose egress is its Elastic IP: configured by allocation id,
    /// or `require_eip` (natctl sets it with `--eip`).
    fn requires_eip(&self) -> bool {
        self.cfg.require_eip || self.cfg.eip_allocation_id.is_some()
    }

    /// Keeps the Elastic IP on our ENI; whether it is there now.
    async fn ensure_address(&mut self, report: &mut ControlReport) -> bool {
        let address = match self
            .cloud
            .address(self.cfg.eip_allocation_id.as_deref(), &self.cfg.stack)
            .await
        {
            Ok(Some(a)) => a,
            Ok(None) => {
                if self.requires_eip() {
                    report.problems.push(format!(
                        "elastic IP: none tagged {}={} (natctl setup --eip allocates it); forwarding no new connection",
                        crate::contract::EGRESS_TAG,
                        self.cfg.stack
                    ));
                }
                return false;
            }
            Err(e) => {
                self.note(report, "elastic IP", &e);
                return false;
            }
        };
        if address.eni_id.as_deref() == Some(self.id.eni_id.as_str()) {
            return true;
        }
        if let Some(other) = &address.eni_id {
            // The same rule as for routes: a newer live natd keeps the address.
            let holder = async {
                let owners = self.cloud.eni_owners(std::slice::from_ref(other)).await?;
                match owners.get(other) {
                    Some(i) => Ok(self.cloud.holders(std::slice::from_ref(i)).await?.remove(i)),
                    None => Ok(None),
                }
            }
            .await;
            match holder {
                Ok(Some(h)) if routes::outranks(&h, &self.me()) => return false,
                Ok(_) => {}
                Err(e) => {
                    self.note(report, "elastic IP", &e);
                    return false;
                }
            }
        }
        match self
            .cloud
            .associate_address(&address.allocation_id, &self.id.eni_id)
            .await
        {
            Ok(()) => {
                info!(
                    "elastic IP {} ({}) now on {}",
                    address.public_ip, address.allocation_id, self.id.eni_id
                );
                true
            }
            Err(e) => {
                self.note(report, "elastic IP", &e);
                false
            }
        }
    }

    async fn membership(&mut self) -> Result<Option<Membership>, aws::Error> {
        if let Some(m) = &self.membership {
            return Ok(m.clone());
        }
        let m = self.cloud.membership(&self.id.instance_id).await?;
        match &m {
            Some(m) => info!(
                "member of Auto Scaling group {} ({})",
                m.group, m.lifecycle_state
            ),
            None => info!("not in an Auto Scaling group"),
        }
        self.membership = Some(m.clone());
        Ok(m)
    }

    async fn complete_launch(&mut self, report: &mut ControlReport) {
        if self.launch_completed {
            return;
        }
        let m = match self.membership().await {
            Ok(m) => m,
            Err(e) => return self.note(report, "auto scaling", &e),
        };
        let Some(m) = m.filter(|m| aws::waits_for_launch(&m.lifecycle_state)) else {
            self.launch_completed = true;
            return;
        };
        match self
            .cloud
            .complete_launch(&m.group, &self.id.instance_id, "CONTINUE")
            .await
        {
            Ok(hooks) => {
                info!(
                    "lifecycle action completed (CONTINUE) for hook(s) [{}] of {}",
                    hooks.join(", "),
                    m.group
                );
                self.launch_completed = true;
            }
            Err(e) => self.note(report, "auto scaling", &e),
        }
    }

    /// Writes the health tag when its summary changed or [`HEALTH_TAG_REFRESH`] passed.
    /// Failures here are logged, not counted: the tag is for operators.
    async fn publish(&mut self, summary: &HealthReport, report: &ControlReport) {
        let mut summary = summary.clone();
        if !report.problems.is_empty() {
            // AWS answered this call but not others: say so in the tag.
            summary.control = health_report::Control::Trouble;
        }
        let due = match &self.published {
            Some((last, at)) => *last != summary || at.elapsed() >= HEALTH_TAG_REFRESH,
            None => true,
        };
        if !due {
            return;
        }
        let value = HealthTag {
            report: summary.clone(),
            at: SystemTime::now(),
        }
        .to_string();
        match self
            .cloud
            .publish_health(&self.id.instance_id, &value)
            .await
        {
            Ok(()) => self.published = Some((summary, Instant::now())),
            Err(e) => warn!("could not publish health: {e}"),
        }
    }
}

/// What the agent knows of its control plane over time, for STATUS and metrics.
#[derive(Debug, Default)]
struct ControlView {
    routes: Option<(usize, usize)>,
    errors_total: u64,
    last_success: Option<SystemTime>,
    trouble_since: Option<SystemTime>,
    last_outage: Option<(Duration, SystemTime)>,
    last_takeover: Option<SystemTime>,
    next_try: Option<Duration>,
    running_since: Option<Instant>,
}

/// A running agent: the data plane it owns, the control plane (absent while a control
/// pass runs), and what it has concluded.
#[derive(Debug)]
pub struct Agent {
    cfg: Config,
    id: Identity,
    data: DataPlane,
    control: Option<ControlPlane>,
    health: Health,
    sdc: Option<bool>,
    view: ControlView,
    backoff: Option<ExponentialBackoff>,
    next_control: Instant,
    /// When the control pass next reads EC2 and Auto Scaling (the drift cadence; an
    /// urgent need reads them sooner).
    next_aws: Instant,
    /// The data plane's verdict when the last control pass that read AWS started.
    last_forwards: bool,
    /// The health summary's words (not its counts) then: a change is published at
    /// once (`natctl status` and `doctor` read the tag).
    last_shape: Option<health_report::Shape>,
    metrics: Option<Metrics>,
    /// What the CloudWatch publisher reads each minute, when it runs.
    cloudwatch: Option<tokio::sync::watch::Sender<crate::cloudwatch::Sample>>,
}

/// The outcome of [`Agent::finish_control`].
#[derive(Debug, Default)]
pub struct Finished {
    /// A failure no retry fixes, before natd was ever ready: exit 2.
    pub fatal: Option<String>,
}

impl Agent {
    /// Finds out who we are (IMDS and the host), retrying with bounded backoff. No AWS
    /// API call is needed to start: the kernel is configured even while EC2 is out of
    /// reach.
    pub async fn start(
        cfg: Config,
        on_retry: impl Fn(&str) + Send + Sync,
    ) -> Result<Self, StartError> {
        let backoff = startup_backoff(&cfg);
        let endpoint = cfg.imds_endpoint.clone();
        let id = (|| imds::identity(endpoint.as_deref()))
            .retry(backoff)
            .when(|e| !matches!(e, imds::Error::Endpoint { .. }))
            .notify(|e, d| on_retry(&format!("waiting for IMDS ({e}); retrying in {d:.1?}")))
            .await?;
        info!(
            instance = %id.instance_id, eni = %id.eni_id, vpc = %id.vpc_id, az = %id.availability_zone,
            "identity from IMDS"
        );
        let cidrs = id.vpc_cidrs.clone();
        let mac = id.mac.clone();
        let mut facts = (|| {
            let (mac, cidrs) = (mac.clone(), cidrs.clone());
            async move { kapply::read_facts(&mac, cidrs) }
        })
        .retry(backoff)
        .notify(|e, d| on_retry(&format!("{e}; retrying in {d:.1?}")))
        .await?;
        let sdk = crate::cloud::sdk_config(&id.region, cfg.aws_endpoint_url.as_deref()).await;
        let port_range = kernel::parse_port_range(&cfg.local_port_range).unwrap_or((1024, 65535));
        let mut plan = kernel::sysctl_plan(&facts, port_range, cfg.conntrack_max);
        if cfg.pair {
            // Connections committed from the peer's state arrive mid-stream: TCP window
            // tracking must not call their packets invalid.
            plan.push(Sysctl {
                key: "net/netfilter/nf_conntrack_tcp_be_liberal".into(),
                value: "1".into(),
                required: false,
            });
        }
        let cloud = Cloud::new(&sdk);
        let pair_parts = if cfg.pair {
            let view = pair::Shared::default();
            let sync = std::sync::Arc::new(pair::Sync::new(&cfg));
            let endpoints = match &cfg.aws_endpoint_url {
                Some(u) => {
                    let e = u
                        .split_once("://")
                        .map(|(_, rest)| rest)
                        .unwrap_or(u)
                        .trim_end_matches('/')
                        .to_string();
                    vec![if e.contains(':') {
                        e
                    } else {
                        format!("{e}:443")
                    }]
                }
                None => pair::default_check_endpoints(&id.region),
            };
            tokio::spawn(pair::run(pair::Ctx {
                cfg: cfg.clone(),
                instance_id: id.instance_id.clone(),
                eni: id.eni_id.clone(),
                cloud: cloud.clone(),
                view: view.clone(),
                iface: facts.egress_interface.clone(),
                imds: Imds::new(cfg.imds_endpoint.as_deref())?,
                mac: id.mac.clone(),
                sync: sync.clone(),
                targets: cfg.probes(),
                endpoint_given: cfg.aws_endpoint_url.is_some(),
                endpoints,
                vpc_cidrs: facts.vpc_cidrs.clone(),
            }));
            info!(
                heartbeat_port = cfg.heartbeat_port,
                sync_port = cfg.sync_port,
                overlay_port = cfg.overlay_port,
                "pair mode: hot standby with state sync"
            );
            Some((view, sync))
        } else {
            None
        };
        // A pair, or a single instance that requires its Elastic IP, forwards new
        // connections only by the stack's address: until natd knows it, nothing new. A
        // restart starts where the previous run left the kernel, so a crash or an
        // upgrade changes neither the address nor whether new connections pass.
        let kernel_io = Kernel::new(cfg.proc_sys_root.clone());
        let (left_ips, left_open) = match kernel_io.iptables_save().await {
            Ok(save) => kernel::left_by_previous_run(&kernel::observe(&save)),
            Err(_) => (Vec::new(), false),
        };
        if cfg.pair {
            facts.forward_new = !left_ips.is_empty();
            facts.egress_ips = left_ips;
            // The link to the peer, kept from the previous run: checks through us go on
            // passing while this natd starts.
            facts.overlay = pair::overlay_left().map(|n| (pair::OVERLAY_DEV.to_string(), n));
        } else if cfg.require_eip || cfg.eip_allocation_id.is_some() {
            facts.forward_new = left_open && left_ips.is_empty();
        }
        if !facts.forward_new {
            warn!(
                "forwarding no new connection until the stack's egress address is known to be on this instance"
            );
        } else if !facts.egress_ips.is_empty() {
            info!(
                "SNAT to the egress address(es) the previous run used [{}] until EC2 says otherwise",
                joined(&facts.egress_ips, ", ")
            );
        }
        let rules = kernel::ruleset(&facts);
        let cloudwatch = cfg.cloudwatch_metrics.then(|| {
            let (tx, rx) = tokio::sync::watch::channel(crate::cloudwatch::Sample::default());
            tokio::spawn(crate::cloudwatch::run(
                crate::cloudwatch::client(&sdk),
                crate::cloudwatch::Settings {
                    stack: cfg.stack.clone(),
                    instance: cfg.pair.then(|| id.instance_id.clone()),
                    buffer_minutes: cfg.cloudwatch_buffer_minutes as usize,
                    period: Duration::from_secs(cfg.cloudwatch_period_secs),
                },
                crate::cloudwatch::Sources {
                    kernel: kernel_io.clone(),
                    interface: facts.egress_interface.clone(),
                    ena_file: cfg.ena_stats_file.clone(),
                    horizon: cfg.cloudwatch_period_secs,
                    watched: Default::default(),
                },
                rx,
            ));
            tx
        });
        info!(
            interface = %facts.egress_interface,
            cidrs = %cidr_list(&facts.vpc_cidrs),
            "egress interface found"
        );
        let data = DataPlane {
            kernel: kernel_io,
            open_applied: false,
            facts,
            plan,
            rules,
            probes: cfg.probes(),
            probe_timeout: Duration::from_millis(cfg.probe_timeout_ms),
            passes: 0,
            skipped_logged: false,
            conntrack_tool_missing_logged: false,
            port_range,
            pair: pair_parts.as_ref().map(|(view, sync)| PairPlane {
                view: view.clone(),
                sync: sync.clone(),
                overlay_port: cfg.overlay_port,
                overlay_for: None,
                resync_due: false,
                trouble: None,
            }),
        };
        let control = ControlPlane {
            cfg: cfg.clone(),
            id: id.clone(),
            cloud,
            imds: Imds::new(cfg.imds_endpoint.as_deref())?,
            launch_time: None,
            cidrs: id.vpc_cidrs.clone(),
            decisions: BTreeMap::new(),
            membership: None,
            launch_completed: false,
            passes: 0,
            published: None,
            ever_ready: false,
            sync: pair_parts.as_ref().map(|(_, sync)| sync.clone()),
            pair: pair_parts.map(|(view, _)| view),
        };
        Ok(Self {
            metrics: cfg.metrics_file.clone().map(Metrics::new),
            cloudwatch,
            cfg,
            id,
            data,
            control: Some(control),
            health: Health::default(),
            sdc: None,
            view: ControlView::default(),
            backoff: None,
            next_control: Instant::now(),
            next_aws: Instant::now(),
            last_forwards: false,
            last_shape: None,
        })
    }

    /// Who we are.
    pub fn identity(&self) -> &Identity {
        &self.id
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// What natd has concluded so far.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// One data-plane pass: check, repair, account, write metrics.
    pub async fn data_pass(&mut self) {
        let problems = self.data.check(self.sdc, &self.id.eni_id).await;
        let (next, notes) = self.health.after_data(&problems, self.cfg.unhealthy_after);
        self.health = next;
        if let Some(p) = &self.data.pair {
            p.view.lock().expect("pair view").forwards = self.health.forwarding();
        }
        for n in notes {
            self.log_note(n);
        }
        self.write_metrics().await;
    }

    /// Starts a control pass when one is due and none runs: the future gives the
    /// control plane back, to [`Agent::finish_control`].
    pub fn start_control(
        &mut self,
    ) -> Option<impl std::future::Future<Output = (ControlPlane, ControlReport)> + use<>> {
        let now = Instant::now();
        if now < self.next_control {
            return None;
        }
        // IMDS (the VPC's CIDRs) is read at every pass: it is local and not throttled
        // per account. EC2 and Auto Scaling only when the drift cadence says so, or at
        // once when something needs them.
        let health = self.health_summary();
        let shape = Some(health.shape());
        let urgent = self.health.report_due()
            || self.health.forwarding() != self.last_forwards
            || shape != self.last_shape
            || !self.data.open_applied
            || self.pair_unsettled();
        let aws = now >= self.next_aws || urgent;
        let cp = self.control.take()?;
        if aws {
            self.last_forwards = self.health.forwarding();
            self.last_shape = shape;
        }
        self.view.running_since = Some(now);
        let input = ControlInput {
            forwards: self.health.forwarding(),
            egress_open: self.data.open_applied,
            report_unhealthy: self.health.report_due(),
            health,
            aws,
        };
        Some(control_pass(cp, input, self.cfg.control_deadline()))
    }

    /// Pair mode: whether the pair needs EC2 read at every pass: no peer known, its
    /// heartbeats missing, nobody holding the address, the fast path moved things in
    /// the last minute (the control pass learns the new state), or a new peer in the
    /// last ten minutes (a rotation's handover tag follows it).
    fn pair_unsettled(&self) -> bool {
        let Some(p) = &self.data.pair else {
            return false;
        };
        let v = p.view.lock().expect("pair view");
        let now = Instant::now();
        v.peer.is_none()
            || v.silence(now).is_none_or(|s| s > PAIR_SILENCE_UNSETTLED)
            || !(v.holder || v.peer_holds)
            || [v.took_at, v.moved_here, v.peer_claim_heard]
                .into_iter()
                .flatten()
                .any(|t| now.saturating_duration_since(t) < PAIR_MOVE_UNSETTLED)
            || v.peer_since
                .is_some_and(|t| now.saturating_duration_since(t) < PAIR_NEW_PEER_UNSETTLED)
    }

    /// Takes the control plane back after a pass and accounts for what it found.
    pub async fn finish_control(&mut self, cp: ControlPlane, report: ControlReport) -> Finished {
        let mut cp = cp;
        self.view.running_since = None;
        let now = SystemTime::now();
        if let Some(sdc) = report.sdc {
            self.sdc = Some(sdc);
        }
        if let Some(r) = report.routes {
            self.view.routes = Some(r);
        }
        if report.took_over {
            self.view.last_takeover = Some(now);
        }
        if let Some(on) = report.eip_on_us {
            self.data.set_forward_new(on);
        }
        let mut cidrs_changed = false;
        if let Some(cidrs) = &report.cidrs
            && *cidrs != cp.cidrs
        {
            info!(
                "VPC CIDR blocks changed: {} -> {}; updating the ruleset",
                cidr_list(&cp.cidrs),
                cidr_list(cidrs)
            );
            cp.cidrs = cidrs.clone();
            self.data.set_cidrs(cidrs.clone());
            cidrs_changed = true;
        }
        let outcome = ControlOutcome {
            problems: report.problems.clone(),
            reported: report.reported,
        };
        let (next, notes) = self.health.after_control(&outcome);
        self.health = next;
        if report.problems.is_empty() {
            self.backoff = None;
            self.view.last_success = Some(now);
            if let Some(since) = self.view.trouble_since.take() {
                self.view.last_outage = Some((now.duration_since(since).unwrap_or_default(), now));
            }
            let cadence = Cadence {
                ever_ready: cp.ever_ready,
                launch_settled: cp.launch_completed,
                took_over: report.took_over,
                pair_unsettled: self.pair_unsettled(),
            };
            if report.aws {
                let wait = next_control_in(
                    cadence,
                    self.cfg.interval(),
                    self.cfg.drift_check(),
                    fastrand::f64(),
                );
                self.next_aws = Instant::now() + wait;
            }
            self.next_control = Instant::now();
            self.view.next_try = None;
        } else {
            self.view.errors_total += report.problems.len() as u64;
            self.view.trouble_since.get_or_insert(now);
            let backoff = self.backoff.get_or_insert_with(|| {
                ExponentialBuilder::default()
                    .with_min_delay(self.cfg.interval())
                    .with_max_delay(self.cfg.control_backoff_max())
                    .with_jitter()
                    .without_max_times()
                    .build()
            });
            let wait = backoff
                .next()
                .unwrap_or(self.cfg.control_backoff_max())
                .min(self.cfg.control_backoff_max());
            self.next_control = Instant::now() + wait;
            // The retry reads AWS too.
            self.next_aws = self.next_control;
            self.view.next_try = Some(wait);
        }
        for n in notes {
            self.log_note(n);
        }
        self.control = Some(cp);
        if cidrs_changed {
            // Apply the new ruleset now rather than at the next tick.
            self.data_pass().await;
        } else {
            self.write_metrics().await;
        }
        Finished {
            fatal: report.fatal,
        }
    }

    /// Tells the group the launch failed for good, if a launch hook is waiting for us.
    /// Best effort: natd is about to exit with status 2 either way.
    pub async fn abandon_launch(&mut self) {
        let Some(cp) = self.control.as_mut() else {
            return;
        };
        if let Ok(Some(m)) = cp.membership().await
            && aws::waits_for_launch(&m.lifecycle_state)
        {
            match cp
                .cloud
                .complete_launch(&m.group, &cp.id.instance_id, "ABANDON")
                .await
            {
                Ok(_) => warn!("lifecycle action completed with ABANDON on {}", m.group),
                Err(e) => error!("could not abandon the launch: {e}"),
            }
        }
    }

    /// Whether the last passes found everything in order (for `--once`).
    pub fn healthy(&self) -> bool {
        self.health.forwarding() && self.health.control_failures == 0
    }

    fn log_note(&self, n: Note) {
        match n {
            Note::Ready => info!("forwarding ready"),
            Note::DataRecovered { after } => {
                info!("data plane healthy again after {after} failed pass(es)")
            }
            Note::DataFailed {
                count,
                limit,
                problems,
            } => warn!(
                "data plane failing ({count}/{limit}): {}",
                problems.join("; ")
            ),
            Note::ReportDue { count } => error!(
                "{count} failed data-plane passes in a row: reporting Unhealthy{}",
                if self.health.control_failures > 0 {
                    " as soon as AWS answers"
                } else {
                    ""
                }
            ),
            Note::ReportDropped => {
                warn!("data plane recovered before the Unhealthy report could be sent; not sent")
            }
            Note::ControlTrouble { count, problems } => warn!(
                "control plane trouble ({count} failed pass(es); forwarding is not affected and this alone never reports Unhealthy): {}",
                problems.join("; ")
            ),
            Note::ControlRecovered { after } => {
                info!("control plane answers again after {after} failed pass(es)")
            }
        }
    }

    /// The report natd publishes in its `natd:health` tag (a timestamp is added).
    fn health_summary(&self) -> HealthReport {
        HealthReport {
            data: self.health.data_state(),
            control: self.health.control_state(),
            failing: (self.health.data_failures > 0).then_some(health_report::Failing {
                count: self.health.data_failures,
                limit: self.cfg.unhealthy_after,
            }),
            routes: self.view.routes.map(|(held, _)| held as u32),
            pair: self.pair_summary(),
            api_outage: self
                .view
                .last_outage
                .map(|(lasted, ended)| health_report::Outage {
                    secs: lasted.as_secs(),
                    ended,
                }),
        }
    }

    /// Pair mode, for the health tag: role, peer and heartbeats, connection counts, the
    /// standby's lag and the last takeover.
    fn pair_summary(&self) -> Option<health_report::PairHealth> {
        use health_report::{Beats, Lag, PairHealth, Peer, Takeover};
        let p = self.data.pair.as_ref()?;
        let v = p.view.lock().expect("pair view");
        let limit = self.cfg.heartbeat_interval() * self.cfg.heartbeat_misses;
        Some(PairHealth {
            role: if v.holder {
                health_report::Role::Holder
            } else {
                health_report::Role::Standby
            },
            peer: v.peer.as_ref().map(|peer| Peer {
                instance: peer.instance_id.clone(),
                beats: match v.silence(Instant::now()) {
                    Some(d) if d < limit => Beats::Ok,
                    Some(_) => Beats::Lost,
                    None => Beats::Never,
                },
            }),
            // Rounded so the tag is not rewritten for every connection.
            held: v.held.map(round2),
            synced: v.synced.map(round2),
            // The standby's lag behind the holder's table: entries (two digits) and how
            // long (in steps of 15 s), so the tag changes only when the lag does.
            lag: v
                .lag
                .amount(Instant::now())
                .map(|(entries, behind)| match entries {
                    0 => Lag::InStep,
                    _ => Lag::Behind {
                        entries: round2(entries),
                        secs: behind.as_secs() / 15 * 15,
                    },
                }),
            takeover: v.last_takeover.as_ref().map(|t| Takeover {
                // Counted done once IMDS lists the moved addresses here (AWS: the remap
                // is asynchronous), else at the API's answer.
                ms: t.confirmed.unwrap_or(t.took).as_millis() as u64,
                at: t.at,
            }),
        })
    }

    /// A one-line state for sd_notify STATUS: the data plane first, then the control
    /// plane when it is in trouble.
    pub fn status_line(&self) -> String {
        let mut s = if self.health.forwarding() {
            let mut s = format!("forwarding via {}", self.data.facts.egress_interface);
            if let Some(p) = self.pair_summary() {
                s.push_str(&format!(" ({p})"));
            }
            if let Some((held, yielded)) = self.view.routes {
                s.push_str(&format!(
                    "; holding {held} route table(s), {yielded} held by a newer natd"
                ));
            }
            s
        } else if self.health.data_failures == 0 {
            "starting".to_string()
        } else {
            format!(
                "data plane failing ({}/{}): {}",
                self.health.data_failures,
                self.cfg.unhealthy_after,
                self.health.data_problems.join("; ")
            )
        };
        if self.health.control_failures > 0 {
            let since = self
                .view
                .trouble_since
                .and_then(|t| t.elapsed().ok())
                .map(|d| format!(" for {}s", d.as_secs()))
                .unwrap_or_default();
            s.push_str(&format!(
                "; control plane unreachable{since} ({} failed pass(es), not counted against health): {}",
                self.health.control_failures,
                self.health.control_problems.join("; ")
            ));
            if let Some(wait) = self.view.next_try {
                s.push_str(&format!("; retrying in {}s", wait.as_secs().max(1)));
            }
        } else if let Some(running) = self.view.running_since.map(|t| t.elapsed())
            && running > (self.cfg.interval() * 2).max(Duration::from_secs(5))
        {
            // The SDK retries a failing call for up to ~15 s before the pass fails.
            s.push_str(&format!(
                "; control plane slow: pass running for {}s (AWS calls retrying)",
                running.as_secs()
            ));
        }
        s
    }

    async fn write_metrics(&mut self) {
        if let Some(tx) = &self.cloudwatch {
            tx.send_replace(self.cloudwatch_sample());
        }
        let Some(m) = &self.metrics else { return };
        let k = &self.data.kernel;
        let num = |key: &str| k.read_sysctl(key).ok().and_then(|v| v.parse::<i64>().ok());
        let nat = match k.nat_connections().await {
            Ok(n) => Some(n),
            Err(e) => {
                if !self.data.conntrack_tool_missing_logged {
                    self.data.conntrack_tool_missing_logged = true;
                    warn!("NAT port use not measured: {e}");
                }
                None
            }
        };
        let unix = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64)
        };
        let snap = Snapshot {
            conntrack_entries: num("net/netfilter/nf_conntrack_count"),
            conntrack_max: num("net/netfilter/nf_conntrack_max"),
            nat_connections: nat.as_ref().map(|n| n.total as i64),
            nat_busiest_destination: nat.as_ref().map(|n| n.busiest as i64),
            nat_ports_per_destination: i64::from(self.data.port_range.1)
                - i64::from(self.data.port_range.0)
                + 1,
            forwarding: self.health.forwarding(),
            data_failures: i64::from(self.health.data_failures),
            control_ok: self.health.control_failures == 0,
            control_failures: i64::from(self.health.control_failures),
            control_errors_total: self.view.errors_total as i64,
            control_last_success: unix(self.view.last_success),
            routes_held: self.view.routes.map(|r| r.0 as i64),
            routes_yielded: self.view.routes.map(|r| r.1 as i64),
            last_takeover: unix(self.view.last_takeover),
            vpc_cidrs: self.data.facts.vpc_cidrs.len() as i64,
            pair_sync_lag: self.data.pair.as_ref().and_then(|p| {
                let lag = p.view.lock().expect("pair view").lag;
                lag.amount(Instant::now())
                    .map(|(e, d)| (e as i64, d.as_secs() as i64))
            }),
            unhealthy_reported: self.health.report == crate::health::Report::Sent,
        };
        if let Err(e) = m.write(&snap) {
            warn!("cannot write metrics: {e}");
        }
    }

    /// What the CloudWatch publisher needs of the agent's conclusions: the data plane
    /// (nothing said before the first check), a pair's standby readiness (the holder
    /// hears the standby; the standby hears the holder and is in step) and the last
    /// takeover, from the same summary the health report is made of.
    fn cloudwatch_sample(&self) -> crate::cloudwatch::Sample {
        use health_report::{Beats, Lag, Role};
        let pair = self.pair_summary();
        let standby_ready = pair.as_ref().map(|p| {
            let heard = p.peer.as_ref().is_some_and(|peer| peer.beats == Beats::Ok);
            match p.role {
                Role::Holder => heard,
                Role::Standby => heard && p.lag.is_none_or(|l| l == Lag::InStep),
            }
        });
        let forwards = self.health.forwarding();
        crate::cloudwatch::Sample {
            // Not forwarding without a failed check yet: starting, not broken.
            forwarding: (forwards || self.health.data_failures > 0).then_some(forwards),
            standby_ready,
            takeover: pair
                .and_then(|p| p.takeover)
                .map(|t| (t.at, Some(t.ms)))
                .or(self.view.last_takeover.map(|t| (t, None))),
        }
    }
}

/// `n` rounded to two significant digits.
fn round2(n: u64) -> u64 {
    let mut scale = 1;
    while n / scale >= 100 {
        scale *= 10;
    }
    n / scale * scale
}

fn cidr_list(c: &[Ipv4Net]) -> String {
    joined(c, ",")
}

/// `items` in words, separated by `sep`.
fn joined<T: std::fmt::Display>(items: &[T], sep: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

fn describe_kernel_changes(c: &kapply::Changes) -> String {
    let mut parts: Vec<String> = c
        .sysctls
        .iter()
        .map(|s| {
            if s == &format!("{}=0", kernel::IPV6_FORWARDING) {
                format!(
                    "{s} (IPv6 forwarding was on: a NAT instance routes no IPv6, which would be a door into the VPC; IPv6 egress is the egress-only internet gateway's)"
                )
            } else {
                s.clone()
            }
        })
        .collect();
    if c.ruleset.is_some() {
        // Only misplaced or doubled jumps (natd's chains in place) are worth their own
        // words; missing jumps come with missing chains, on first start or after a flush.
        let misplaced: Vec<&String> = c.hooks.iter().filter(|h| !h.ends_with("missing")).collect();
        if misplaced.is_empty() {
            parts.push(format!(
                "iptables chains {} and {}",
                kernel::NAT_CHAIN,
                kernel::FILTER_CHAIN
            ));
        } else {
            parts.push(format!(
                "natd's jump back to the top ({})",
                misplaced
                    .iter()
                    .map(|h| h.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_pass_runs_every_tick_until_settled_then_at_the_drift_cadence() {
        let interval = Duration::from_secs(5);
        let drift = Duration::from_secs(60);
        let settled = Cadence {
            ever_ready: true,
            launch_settled: true,
            took_over: false,
            pair_unsettled: false,
        };
        for unsettled in [
            Cadence {
                ever_ready: false,
                ..settled
            },
            Cadence {
                launch_settled: false,
                ..settled
            },
            Cadence {
                took_over: true,
                ..settled
            },
            Cadence {
                pair_unsettled: true,
                ..settled
            },
        ] {
            assert_eq!(
                next_control_in(unsettled, interval, drift, 0.5),
                Duration::ZERO,
                "{unsettled:?}"
            );
        }
        assert_eq!(next_control_in(settled, interval, drift, 0.5), drift);
        assert_eq!(
            next_control_in(settled, interval, drift, 0.0),
            Duration::from_secs(48)
        );
        assert_eq!(
            next_control_in(settled, interval, drift, 1.0),
            Duration::from_secs(72)
        );
        let summary_shape = |s: &str| {
            HealthTag::parse(&format!("{s} at=2026-11-25T10:00:00Z"))
                .expect("a report")
                .report
                .shape()
        };
        assert_eq!(
            summary_shape(
                "data=ok control=ok routes=1 pair=standby peer=i-1 beat=ok held=1200 synced=3400"
            ),
            summary_shape(
                "data=ok control=ok routes=1 pair=standby peer=i-1 beat=ok held=1300 synced=3500"
            )
        );
        assert_ne!(
            summary_shape("data=ok control=ok pair=standby peer=i-1 beat=never"),
            summary_shape("data=ok control=ok pair=standby peer=i-1 beat=ok")
        );
        // A copy falling behind is worth a pass at once; how far behind it is, not.
        assert_ne!(
            summary_shape("data=ok control=ok pair=standby beat=ok lag=0"),
            summary_shape("data=ok control=ok pair=standby beat=ok lag=1200/0s")
        );
        assert_eq!(
            summary_shape("data=ok control=ok pair=standby beat=ok lag=1200/0s"),
            summary_shape("data=ok control=ok pair=standby beat=ok lag=3400/45s")
        );
        // Never faster than the interval.
        assert_eq!(
            next_control_in(settled, interval, Duration::from_secs(5), 0.0),
            interval
        );
    }
}
