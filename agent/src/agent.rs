//! The reconcile pass: make the kernel forward, turn source/dest check off, and only
//! then take over the tagged routes (make before break), hold the Elastic IP, complete
//! the launch lifecycle action, and count failed passes towards an Unhealthy report.

use crate::aws::{self, Cloud, Membership};
use crate::config::Config;
use crate::imds::{self, Identity};
use crate::kernel::apply::{self as kapply, Kernel};
use crate::kernel::{self, Facts, Ruleset, Sysctl};
use crate::routes::{self, Decision, Me, Target};
use backon::{ExponentialBuilder, Retryable};
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::{error, info, warn};

/// First wait between start-up attempts; doubles up to [`STARTUP_MAX_DELAY`], with jitter.
const STARTUP_MIN_DELAY: Duration = Duration::from_millis(500);
const STARTUP_MAX_DELAY: Duration = Duration::from_secs(10);

/// Why natd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// IMDS did not answer (after all attempts) or answered nonsense.
    #[error("cannot read instance identity: {0}")]
    Imds(#[from] imds::Error),
    /// The host does not match what IMDS says (no interface with the ENI's MAC).
    #[error("cannot inspect the host: {0}")]
    Host(#[from] kapply::Error),
    /// The first AWS call failed.
    #[error("cannot describe this instance: {0}")]
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

/// The outcome of one pass.
#[derive(Debug, Default, Clone)]
pub struct PassReport {
    /// What is wrong after this pass's repairs; empty means natd forwards and holds
    /// what it should.
    pub problems: Vec<String>,
    /// A problem no retry will fix (permissions), seen before natd was ever ready.
    pub fatal: Option<String>,
    /// Route tables whose default route targets us after this pass.
    pub routes_held: usize,
    /// Route tables a newer natd holds.
    pub routes_yielded: usize,
}

impl PassReport {
    /// Whether the pass found everything in order.
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A running agent: who it is, its clients, and what it has already told the log.
#[derive(Debug)]
pub struct Agent {
    cfg: Config,
    id: Identity,
    cloud: Cloud,
    kernel: Kernel,
    facts: Facts,
    plan: Vec<Sysctl>,
    rules: Ruleset,
    me: Me,
    passes: u64,
    ever_ready: bool,
    decisions: BTreeMap<String, Decision>,
    membership: Option<Option<Membership>>,
    launch_completed: bool,
    failures: u32,
    reported_unhealthy: bool,
    skipped_logged: bool,
    last_problems: Vec<String>,
}

/// Reports this instance Unhealthy to its Auto Scaling group so the group replaces it:
/// what systemd runs (`natd --report-unhealthy`, from `natd-unhealthy.service`) when
/// natd itself keeps failing and cannot report from its own loop. Returns the group,
/// or `None` when the instance is in no group.
pub async fn report_unhealthy(cfg: &Config) -> Result<Option<String>, StartError> {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(STARTUP_MIN_DELAY)
        .with_max_delay(STARTUP_MAX_DELAY)
        .with_max_times(cfg.startup_attempts.saturating_sub(1) as usize)
        .with_jitter();
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

impl Agent {
    /// Finds out who we are (IMDS, the host, EC2), retrying with bounded backoff.
    pub async fn start(
        cfg: Config,
        on_retry: impl Fn(&str) + Send + Sync,
    ) -> Result<Self, StartError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(STARTUP_MIN_DELAY)
            .with_max_delay(STARTUP_MAX_DELAY)
            .with_max_times(cfg.startup_attempts.saturating_sub(1) as usize)
            .with_jitter();
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
        let facts = (|| {
            let (mac, cidrs) = (mac.clone(), cidrs.clone());
            async move { kapply::read_facts(&mac, cidrs) }
        })
        .retry(backoff)
        .notify(|e, d| on_retry(&format!("{e}; retrying in {d:.1?}")))
        .await?;
        let sdk = crate::cloud::sdk_config(&id.region, cfg.aws_endpoint_url.as_deref()).await;
        let cloud = Cloud::new(&sdk);
        let instance_id = id.instance_id.clone();
        let me_holder = (|| cloud.me(&instance_id))
            .retry(backoff)
            .when(|e| !e.is_permanent())
            .notify(|e, d| on_retry(&format!("{e}; retrying in {d:.1?}")))
            .await?;
        let port_range = kernel::parse_port_range(&cfg.local_port_range).unwrap_or((1024, 65535));
        let plan = kernel::sysctl_plan(&facts, port_range, cfg.conntrack_max);
        let rules = kernel::ruleset(&facts);
        info!(
            interface = %facts.egress_interface,
            cidrs = %facts.vpc_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "egress interface found"
        );
        let me = Me {
            instance_id: id.instance_id.clone(),
            eni_id: id.eni_id.clone(),
            launch_time: me_holder.launch_time,
            stack: cfg.stack.clone(),
        };
        Ok(Self {
            kernel: Kernel::new(cfg.proc_sys_root.clone()),
            cfg,
            id,
            cloud,
            facts,
            plan,
            rules,
            me,
            passes: 0,
            ever_ready: false,
            decisions: BTreeMap::new(),
            membership: None,
            launch_completed: false,
            failures: 0,
            reported_unhealthy: false,
            skipped_logged: false,
            last_problems: Vec::new(),
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

    /// One reconcile pass: check everything, repair what drifted, report.
    pub async fn pass(&mut self) -> PassReport {
        self.passes += 1;
        let mut report = PassReport::default();
        let forwards = self.ensure_forwarding(&mut report).await;
        if forwards {
            // Make before break: routes and the address move only to an instance that
            // has just been verified to forward.
            self.ensure_routes(&mut report).await;
            self.ensure_address(&mut report).await;
        }
        if report.healthy() {
            self.complete_launch(&mut report).await;
        }
        self.account(&mut report).await;
        report
    }

    async fn ensure_forwarding(&mut self, report: &mut PassReport) -> bool {
        let first = self.passes == 1;
        match self.kernel.ensure(&self.plan, &self.rules).await {
            Ok(changes) => {
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
            Err(e) => {
                report.problems.push(format!("kernel: {e}"));
                return false;
            }
        }
        let eni = self.id.eni_id.clone();
        match self.cloud.source_dest_check(&eni).await {
            Ok(false) => {}
            Ok(true) => {
                let fixed = async {
                    self.cloud.disable_source_dest_check(&eni).await?;
                    self.cloud.source_dest_check(&eni).await
                }
                .await;
                match fixed {
                    Ok(false) if first => info!("source/dest check disabled on {eni}"),
                    Ok(false) => warn!("source/dest check was on again on {eni}; disabled"),
                    Ok(true) => {
                        report.problems.push(format!(
                            "source/dest check on {eni} still on after disabling it"
                        ));
                        return false;
                    }
                    Err(e) => {
                        self.note_api_error(report, "source/dest check", &e);
                        return false;
                    }
                }
            }
            Err(e) => {
                self.note_api_error(report, "source/dest check", &e);
                return false;
            }
        }
        for target in self.cfg.probe_targets.clone() {
            if let Err(e) = self.probe(&target).await {
                report.problems.push(format!(
                    "probe {target} via {}: {e}",
                    self.facts.egress_interface
                ));
            }
        }
        report.problems.is_empty()
    }

    /// One TCP connect to `target`, leaving by the egress interface.
    async fn probe(&self, target: &str) -> Result<(), String> {
        let timeout = Duration::from_millis(self.cfg.probe_timeout_ms);
        let attempt = async {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(target)
                .await
                .map_err(|e| format!("resolve: {e}"))?
                .filter(|a| a.is_ipv4())
                .collect();
            let addr = addrs.first().ok_or_else(|| "no IPv4 address".to_string())?;
            let sock = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
            sock.bind_device(Some(self.facts.egress_interface.as_bytes()))
                .map_err(|e| format!("bind to {}: {e}", self.facts.egress_interface))?;
            sock.connect(*addr)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }

    async fn ensure_routes(&mut self, report: &mut PassReport) {
        let tables = match self
            .cloud
            .tagged_tables(&self.id.vpc_id, &self.cfg.stack)
            .await
        {
            Ok(t) => t,
            Err(e) => return self.note_api_error(report, "routes", &e),
        };
        let holders = match self.resolve_holders(&tables).await {
            Ok(h) => h,
            Err(e) => return self.note_api_error(report, "routes", &e),
        };
        let decisions = routes::plan(&self.me, &tables, &holders);
        let mut held = Vec::new();
        let mut now = BTreeMap::new();
        for (table, decision) in decisions {
            let write = match &decision {
                Decision::Create => Some(true),
                Decision::Replace { .. } => Some(false),
                Decision::Ours | Decision::Yield { .. } => None,
            };
            if let Some(create) = write {
                if let Err(e) = self
                    .cloud
                    .write_route(&table, &self.id.eni_id, create)
                    .await
                {
                    self.note_api_error(report, "routes", &e);
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
                        info!(
                            "route table {table}: newer natd {holder} holds 0.0.0.0/0; standing by"
                        )
                    }
                    Decision::Ours if self.passes == 1 => {
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
        report.routes_yielded = now
            .values()
            .filter(|d| matches!(d, Decision::Yield { .. }))
            .count();
        report.routes_held = held.len();
        if self.passes == 1 || now != self.decisions {
            info!(
                "holding {} route table(s) [{}], {} held by a newer natd",
                held.len(),
                held.join(", "),
                report.routes_yielded
            );
        }
        self.decisions = now;
    }

    /// Maps route targets that are not ours to the instance behind them.
    async fn resolve_holders(
        &self,
        tables: &[routes::Table],
    ) -> Result<BTreeMap<Target, routes::Holder>, aws::Error> {
        let targets = routes::targets_to_resolve(&self.me, tables);
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

    async fn ensure_address(&mut self, report: &mut PassReport) {
        let address = match self
            .cloud
            .address(self.cfg.eip_allocation_id.as_deref(), &self.cfg.stack)
            .await
        {
            Ok(Some(a)) => a,
            Ok(None) => return,
            Err(e) => return self.note_api_error(report, "elastic IP", &e),
        };
        if address.eni_id.as_deref() == Some(self.id.eni_id.as_str()) {
            return;
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
                Ok(Some(h)) if routes::outranks(&h, &self.me) => return,
                Ok(_) => {}
                Err(e) => return self.note_api_error(report, "elastic IP", &e),
            }
        }
        match self
            .cloud
            .associate_address(&address.allocation_id, &self.id.eni_id)
            .await
        {
            Ok(()) => info!(
                "elastic IP {} ({}) now on {}",
                address.public_ip, address.allocation_id, self.id.eni_id
            ),
            Err(e) => self.note_api_error(report, "elastic IP", &e),
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

    async fn complete_launch(&mut self, report: &mut PassReport) {
        if self.launch_completed {
            return;
        }
        let m = match self.membership().await {
            Ok(m) => m,
            Err(e) => return self.note_api_error(report, "auto scaling", &e),
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
            Err(e) => self.note_api_error(report, "auto scaling", &e),
        }
    }

    /// Tells the group the launch failed for good, if a launch hook is waiting for us.
    /// Best effort: natd is about to exit with status 2 either way.
    pub async fn abandon_launch(&mut self) {
        if let Ok(Some(m)) = self.membership().await
            && aws::waits_for_launch(&m.lifecycle_state)
        {
            match self
                .cloud
                .complete_launch(&m.group, &self.id.instance_id, "ABANDON")
                .await
            {
                Ok(_) => warn!("lifecycle action completed with ABANDON on {}", m.group),
                Err(e) => error!("could not abandon the launch: {e}"),
            }
        }
    }

    fn note_api_error(&self, report: &mut PassReport, what: &str, e: &aws::Error) {
        if e.is_permanent() && !self.ever_ready && report.fatal.is_none() {
            report.fatal = Some(format!("{what}: {e}"));
        }
        report.problems.push(format!("{what}: {e}"));
    }

    async fn account(&mut self, report: &mut PassReport) {
        if report.healthy() {
            if !self.ever_ready {
                info!("forwarding ready");
            } else if self.failures > 0 {
                info!("healthy again after {} failed pass(es)", self.failures);
            }
            self.ever_ready = true;
            self.failures = 0;
            self.last_problems.clear();
            return;
        }
        self.failures += 1;
        if report.problems != self.last_problems {
            warn!(
                "pass failed ({}/{}): {}",
                self.failures,
                self.cfg.unhealthy_after,
                report.problems.join("; ")
            );
            self.last_problems = report.problems.clone();
        }
        if self.failures >= self.cfg.unhealthy_after && !self.reported_unhealthy {
            match self.membership().await {
                Ok(Some(m)) => match self.cloud.set_unhealthy(&self.id.instance_id).await {
                    Ok(()) => {
                        error!(
                            "{} failed passes; reported Unhealthy to {} for replacement",
                            self.failures, m.group
                        );
                        self.reported_unhealthy = true;
                    }
                    Err(e) => error!("could not report Unhealthy: {e}"),
                },
                Ok(None) => {
                    error!(
                        "{} failed passes and no Auto Scaling group to replace this instance",
                        self.failures
                    );
                    self.reported_unhealthy = true;
                }
                Err(e) => error!("could not look up the Auto Scaling group: {e}"),
            }
        }
    }

    /// A one-line state for sd_notify STATUS.
    pub fn status_line(&self, report: &PassReport) -> String {
        if report.healthy() {
            format!(
                "forwarding via {}; holding {} route table(s), {} held by a newer natd",
                self.facts.egress_interface, report.routes_held, report.routes_yielded
            )
        } else {
            format!(
                "degraded ({}/{}): {}",
                self.failures,
                self.cfg.unhealthy_after,
                report.problems.join("; ")
            )
        }
    }
}

fn describe_kernel_changes(c: &kapply::Changes) -> String {
    let mut parts = c.sysctls.clone();
    if c.ruleset.is_some() {
        parts.push(format!(
            "iptables chains {} and {}",
            kernel::NAT_CHAIN,
            kernel::FILTER_CHAIN
        ));
    }
    parts.join(", ")
}
