//! A stack composed of its parts. Setup is the parts' plans put together; the switch
//! between dev and prod is new part ready, routes moved, drain, old part removed; and
//! teardown is every part's removal in dependency order. All three are data
//! ([`Step`]s): `plan --output json` and `teardown --dry-run` show exactly what apply
//! will do, and the text rendering is made from the same steps.

use crate::aws::wait::{self, Poll};
use crate::aws::{Clients, Error};
use crate::parts::{Progress, alarms, flow_logs, ipv6, lambda, nat_gateways, nat_instance};
use serde::Serialize;
use std::time::Duration;

/// The egress a stack asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "env", content = "spec", rename_all = "snake_case")]
pub enum Egress {
    /// One NAT instance.
    Dev(nat_instance::Spec),
    /// One NAT gateway per AZ.
    Prod(nat_gateways::Spec),
}

/// What setup is asked to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    /// Stack name.
    pub stack: String,
    /// The egress.
    pub egress: Egress,
    /// The Lambda wiring, when a function is named.
    pub lambda: Option<lambda::Spec>,
    /// When switching between dev and prod: seconds the old egress stays after the
    /// routes moved (route changes propagate, open connections finish).
    pub drain_secs: u64,
    /// The VPC's flow logs.
    pub flow_logs: FlowLogs,
    /// The CloudWatch alarms on natd's metrics (a NAT-instance stack); `None`: the
    /// stack has none (its existing ones go).
    pub alarms: Option<alarms::Spec>,
    /// IPv6 egress by an egress-only internet gateway (`--ipv6`); `None`: left as it is.
    pub ipv6: Option<ipv6::Spec>,
}

/// What setup does with the stack's flow logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "flow_logs", content = "spec", rename_all = "snake_case")]
pub enum FlowLogs {
    /// Leave them as they are (`--flow-logs` not given).
    #[default]
    Leave,
    /// Build them.
    On(flow_logs::Spec),
    /// Remove the stack's (`--flow-logs off`).
    Off,
}

impl Request {
    /// The route tables the requested egress routes itself: in a switch, the old egress
    /// leaves these to it. Dev: every private table (natd takes them). Prod: the
    /// private tables it routes in place, and its split tables (created by the switch,
    /// so not known here: the old egress never held them).
    pub fn tables_taken(&self) -> std::collections::BTreeSet<String> {
        match &self.egress {
            Egress::Dev(spec) => spec.private_tables.clone(),
            Egress::Prod(spec) => spec
                .azs
                .values()
                .flat_map(|z| &z.private)
                .filter(|s| !s.shared)
                .map(|s| s.table.clone())
                .collect(),
        }
    }

    /// `dev` or `prod`.
    pub fn env(&self) -> &'static str {
        match self.egress {
            Egress::Dev(_) => "dev",
            Egress::Prod(_) => "prod",
        }
    }
}

/// A change one part makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "part", rename_all = "snake_case")]
pub enum Build {
    /// The NAT instance (dev).
    NatInstance(nat_instance::Action),
    /// The NAT gateways (prod).
    NatGateways(nat_gateways::Action),
    /// The Lambda wiring.
    Lambda(lambda::Action),
    /// The VPC's flow logs.
    FlowLogs(flow_logs::Action),
    /// The alarms on natd's metrics.
    Alarms(alarms::Action),
    /// IPv6 egress.
    Ipv6(ipv6::Action),
}

/// A removal of one part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "part", rename_all = "snake_case")]
pub enum Remove {
    /// The NAT instance (dev).
    NatInstance(nat_instance::Removal),
    /// The NAT gateways (prod).
    NatGateways(nat_gateways::Removal),
    /// The Lambda wiring.
    Lambda(lambda::Removal),
    /// The VPC's flow logs.
    FlowLogs(flow_logs::Removal),
    /// The alarms on natd's metrics.
    Alarms(alarms::Removal),
    /// IPv6 egress.
    Ipv6(ipv6::Removal),
}

/// One step of setup, a switch, or teardown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Build or change part of the stack.
    Build(Build),
    /// Keep the old egress while open connections finish and route changes propagate.
    Drain {
        /// Seconds.
        secs: u64,
    },
    /// Remove part of the stack.
    Remove(Remove),
}

/// Why setup refuses to go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The NAT instance part refuses.
    #[error(transparent)]
    NatInstance(#[from] nat_instance::Refusal),
    /// The NAT gateways part refuses.
    #[error(transparent)]
    NatGateways(#[from] nat_gateways::Refusal),
    /// The Lambda part refuses.
    #[error(transparent)]
    Lambda(#[from] lambda::Refusal),
    /// The flow logs part refuses (a same-named resource that is not the stack's).
    #[error(transparent)]
    FlowLogs(#[from] crate::parts::Foreign),
    /// The IPv6 part refuses.
    #[error(transparent)]
    Ipv6(#[from] ipv6::Refusal),
}

/// What the egress part observes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressObserved {
    /// Dev.
    Dev(nat_instance::Observed),
    /// Prod.
    Prod(nat_gateways::Observed),
}

/// The other egress of the stack, when it exists (a switch removes it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Other {
    /// Nothing of the other egress.
    #[default]
    None,
    /// A NAT instance (switching to prod).
    NatInstance(nat_instance::Existing),
    /// NAT gateways (switching to dev).
    NatGateways(nat_gateways::Existing),
}

/// Everything the plan looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The egress part.
    pub egress: EgressObserved,
    /// The Lambda part.
    pub lambda: Option<lambda::Observed>,
    /// The flow logs part, when asked for.
    pub flow_logs: Option<flow_logs::Observed>,
    /// The stack's flow logs, when asked to remove them.
    pub flow_logs_existing: Option<flow_logs::Existing>,
    /// The other egress.
    pub other: Other,
    /// The stack's alarms.
    pub alarms: alarms::Observed,
    /// The IPv6 part, when asked for.
    pub ipv6: Option<ipv6::Observed>,
}

/// The steps that build `req` from `o`: the new egress, the Lambda wiring, then (when
/// the other egress exists) the switch: natd holds the routes (dev), drain, the old
/// egress removed.
pub fn plan(req: &Request, o: &Observed) -> Result<Vec<Step>, Refusal> {
    let mut out = Vec::new();
    match (&req.egress, &o.egress) {
        (Egress::Dev(spec), EgressObserved::Dev(obs)) => out.extend(
            nat_instance::plan(spec, obs)?
                .into_iter()
                .map(|a| Step::Build(Build::NatInstance(a))),
        ),
        (Egress::Prod(spec), EgressObserved::Prod(obs)) => out.extend(
            nat_gateways::plan(spec, obs)?
                .into_iter()
                .map(|a| Step::Build(Build::NatGateways(a))),
        ),
        // read() observes the part the request names.
        _ => {}
    }
    // Before the function: Lambda takes Ipv6AllowedForDualStack only on dual-stack
    // subnets.
    if let (Some(spec), Some(obs)) = (&req.ipv6, &o.ipv6) {
        out.extend(
            ipv6::plan(spec, obs)?
                .into_iter()
                .map(|a| Step::Build(Build::Ipv6(a))),
        );
    }
    if let (Some(spec), Some(obs)) = (&req.lambda, &o.lambda) {
        out.extend(
            lambda::plan(spec, obs)?
                .into_iter()
                .map(|a| Step::Build(Build::Lambda(a))),
        );
    }
    if let (FlowLogs::On(spec), Some(obs)) = (&req.flow_logs, &o.flow_logs) {
        out.extend(
            flow_logs::plan(spec, obs)?
                .into_iter()
                .map(|a| Step::Build(Build::FlowLogs(a))),
        );
    }
    if let (FlowLogs::Off, Some(e)) = (&req.flow_logs, &o.flow_logs_existing) {
        out.extend(
            flow_logs::plan_remove(e)
                .into_iter()
                .map(|r| Step::Remove(Remove::FlowLogs(r))),
        );
    }
    match &req.alarms {
        Some(spec) => out.extend(
            alarms::plan(spec, &o.alarms)
                .into_iter()
                .map(|a| Step::Build(Build::Alarms(a))),
        ),
        None => out.extend(
            alarms::plan_remove(&alarms::Existing {
                alarms: o.alarms.alarms.iter().map(|a| a.name.clone()).collect(),
            })
            .into_iter()
            .map(|r| Step::Remove(Remove::Alarms(r))),
        ),
    }
    let taken = req.tables_taken();
    let mut removal: Vec<Remove> = match &o.other {
        Other::None => vec![],
        Other::NatInstance(e) => nat_instance::plan_remove(&req.stack, e, Some(&taken))
            .into_iter()
            .map(Remove::NatInstance)
            .collect(),
        Other::NatGateways(e) => nat_gateways::plan_remove(e, Some(&taken))
            .into_iter()
            .map(Remove::NatGateways)
            .collect(),
    };
    // A switch between zonal and regional gateways (or an AZ the stack no longer
    // serves): the replaced gateways go after the same drain.
    if let EgressObserved::Prod(obs) = &o.egress {
        removal.extend(
            nat_gateways::plan_remove(&obs.retiring, None)
                .into_iter()
                .map(Remove::NatGateways),
        );
    }
    if !removal.is_empty() {
        if matches!(req.egress, Egress::Dev(_)) {
            // natd moves the routes itself once the tables are tagged: the gateways go
            // only once it holds every one.
            out.push(Step::Build(Build::NatInstance(
                nat_instance::Action::WaitForTakeover,
            )));
        }
        out.push(Step::Drain {
            secs: req.drain_secs,
        });
        out.extend(removal.into_iter().map(Step::Remove));
    }
    Ok(out)
}

/// What the plan found that it does not change but the user should know.
pub fn warnings(o: &Observed) -> Vec<String> {
    match &o.egress {
        EgressObserved::Prod(p) => p
            .duplicates
            .iter()
            .map(|d| {
                format!(
                    "duplicate {d}: the stack uses one per AZ; delete the extra one once nothing uses it"
                )
            })
            .chain(p.kept.iter().cloned())
            .collect(),
        EgressObserved::Dev(_) => vec![],
    }
}

/// Reads what the plan looks at.
pub async fn read(c: &Clients, req: &Request) -> Result<Observed, Error> {
    let (egress, other) = match &req.egress {
        Egress::Dev(spec) => (
            EgressObserved::Dev(nat_instance::read(c, spec).await?),
            Other::NatGateways(nat_gateways::read_existing(c, &req.stack).await?),
        ),
        Egress::Prod(spec) => (
            EgressObserved::Prod(nat_gateways::read(c, spec).await?),
            Other::NatInstance(nat_instance::read_existing(c, &req.stack).await?),
        ),
    };
    let lambda = match &req.lambda {
        Some(spec) => Some(lambda::read(c, spec).await?),
        None => None,
    };
    let (flow_logs, flow_logs_existing) = match &req.flow_logs {
        FlowLogs::Leave => (None, None),
        FlowLogs::On(spec) => (Some(flow_logs::read(c, spec).await?), None),
        FlowLogs::Off => (None, Some(flow_logs::read_existing(c, &req.stack).await?)),
    };
    Ok(Observed {
        egress,
        lambda,
        flow_logs,
        flow_logs_existing,
        other,
        alarms: alarms::read(c, &req.stack).await?,
        ipv6: match &req.ipv6 {
            Some(spec) => Some(ipv6::read(c, spec).await?),
            None => None,
        },
    })
}

/// Carries out `steps` (from [`plan`] on `o`) in order.
pub async fn apply(
    c: &Clients,
    req: &Request,
    o: &Observed,
    steps: &[Step],
    progress: Progress<'_>,
) -> Result<(), Error> {
    let mut i = 0;
    while i < steps.len() {
        // A run of consecutive steps of one part goes to that part at once: its apply
        // carries ids from one action to the next.
        let run = steps[i..]
            .iter()
            .take_while(|s| same_part(s, &steps[i]))
            .count();
        let slice = &steps[i..i + run];
        match (&steps[i], &req.egress, &o.egress) {
            (Step::Build(Build::NatInstance(_)), Egress::Dev(spec), EgressObserved::Dev(obs)) => {
                let actions: Vec<_> = slice
                    .iter()
                    .filter_map(|s| match s {
                        Step::Build(Build::NatInstance(a)) => Some(a.clone()),
                        _ => None,
                    })
                    .collect();
                nat_instance::apply(c, spec, obs, &actions, progress).await?;
            }
            (Step::Build(Build::NatGateways(_)), Egress::Prod(spec), EgressObserved::Prod(obs)) => {
                let actions: Vec<_> = slice
                    .iter()
                    .filter_map(|s| match s {
                        Step::Build(Build::NatGateways(a)) => Some(a.clone()),
                        _ => None,
                    })
                    .collect();
                nat_gateways::apply(c, spec, obs, &actions, progress).await?;
            }
            (Step::Build(Build::Lambda(_)), ..) => {
                if let (Some(spec), Some(obs)) = (&req.lambda, &o.lambda) {
                    let actions: Vec<_> = slice
                        .iter()
                        .filter_map(|s| match s {
                            Step::Build(Build::Lambda(a)) => Some(a.clone()),
                            _ => None,
                        })
                        .collect();
                    lambda::apply(c, spec, obs, &actions, progress).await?;
                }
            }
            (Step::Build(Build::FlowLogs(_)), ..) => {
                if let (FlowLogs::On(spec), Some(obs)) = (&req.flow_logs, &o.flow_logs) {
                    let actions: Vec<_> = slice
                        .iter()
                        .filter_map(|s| match s {
                            Step::Build(Build::FlowLogs(a)) => Some(a.clone()),
                            _ => None,
                        })
                        .collect();
                    flow_logs::apply(c, spec, obs, &actions, progress).await?;
                }
            }
            (Step::Build(Build::Alarms(_)), ..) => {
                if let Some(spec) = &req.alarms {
                    let actions: Vec<_> = slice
                        .iter()
                        .filter_map(|s| match s {
                            Step::Build(Build::Alarms(a)) => Some(a.clone()),
                            _ => None,
                        })
                        .collect();
                    alarms::apply(c, spec, &o.alarms, &actions, progress).await?;
                }
            }
            (Step::Build(Build::Ipv6(_)), ..) => {
                if let (Some(spec), Some(obs)) = (&req.ipv6, &o.ipv6) {
                    let actions: Vec<_> = slice
                        .iter()
                        .filter_map(|s| match s {
                            Step::Build(Build::Ipv6(a)) => Some(a.clone()),
                            _ => None,
                        })
                        .collect();
                    ipv6::apply(c, spec, obs, &actions, progress).await?;
                }
            }
            (Step::Remove(Remove::Alarms(_)), ..) => {
                let e = alarms::read_existing(c, &req.stack).await?;
                alarms::remove(c, &alarms::plan_remove(&e), progress).await?;
            }
            (Step::Remove(Remove::FlowLogs(_)), ..) => {
                let e = flow_logs::read_existing(c, &req.stack).await?;
                flow_logs::remove(c, &flow_logs::plan_remove(&e), progress).await?;
            }
            (Step::Drain { secs }, ..) => drain(*secs, progress).await,
            // The routes moved since the plan was made: the old egress is read again
            // and removed as it is now.
            (Step::Remove(Remove::NatInstance(_)), ..) => {
                let e = nat_instance::read_existing(c, &req.stack).await?;
                let taken = req.tables_taken();
                let removals = nat_instance::plan_remove(&req.stack, &e, Some(&taken));
                nat_instance::remove(c, &removals, progress).await?;
            }
            (Step::Remove(Remove::NatGateways(_)), Egress::Prod(spec), _) => {
                let (retire, kept) = nat_gateways::read_retiring(c, spec).await?;
                for k in kept {
                    progress(&format!("warning: {k}"));
                }
                let removals = nat_gateways::plan_remove(&retire, None);
                nat_gateways::remove(c, &removals, progress).await?;
            }
            (Step::Remove(Remove::NatGateways(_)), ..) => {
                let e = nat_gateways::read_existing(c, &req.stack).await?;
                let taken = req.tables_taken();
                let removals = nat_gateways::plan_remove(&e, Some(&taken));
                nat_gateways::remove(c, &removals, progress).await?;
            }
            (Step::Remove(Remove::Lambda(_)), ..) => {
                let e = lambda::read_existing(c, &req.stack).await?;
                lambda::remove(c, &lambda::plan_remove(&e), progress).await?;
            }
            _ => {}
        }
        i += run;
    }
    Ok(())
}

/// How long the read-back after applying waits for AWS to show what was applied: EC2
/// and IAM reads are eventually consistent ("might not be immediately visible to all
/// subsequent commands"), usually for a second or less, at times for several.
pub const READ_BACK_LIMIT: Duration = Duration::from_secs(60);

/// What is still needed after applying: the plan made from a fresh read, less the
/// steps that are waits by nature. Read again (with backoff, up to [`READ_BACK_LIMIT`])
/// while something still shows as needed, since a change just made may not show yet.
pub async fn left_after_apply(
    c: &Clients,
    req: &Request,
    progress: Progress<'_>,
) -> Result<Vec<Step>, Error> {
    let last = std::cell::RefCell::new(Vec::new());
    let r = wait::until(
        "AWS to show the changes",
        "",
        READ_BACK_LIMIT,
        progress,
        || {
            let last = &last;
            async move {
                let o = read(c, req).await?;
                let left: Vec<Step> = plan(req, &o)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|s| {
                        !matches!(
                            s,
                            Step::Build(Build::NatInstance(nat_instance::Action::WaitForTakeover))
                                | Step::Drain { .. }
                        )
                    })
                    .collect();
                if left.is_empty() {
                    return Ok(Poll::Ready(()));
                }
                let n = left.len();
                *last.borrow_mut() = left;
                Ok(Poll::Waiting(format!("{n} change(s) not visible yet")))
            }
        },
    )
    .await;
    match r {
        Ok(()) => Ok(Vec::new()),
        Err(Error::Timeout { .. }) => Ok(last.into_inner()),
        Err(e) => Err(e),
    }
}

/// What a teardown left, read back (with backoff, up to [`READ_BACK_LIMIT`]) until
/// AWS shows the removals: a re-run right after a teardown then finds nothing to do.
pub async fn left_after_teardown(
    c: &Clients,
    stack: &str,
    progress: Progress<'_>,
) -> Result<Vec<Step>, Error> {
    let last = std::cell::RefCell::new(Vec::new());
    let r = wait::until(
        "AWS to show the removals",
        stack,
        READ_BACK_LIMIT,
        progress,
        || {
            let last = &last;
            async move {
                let left = plan_teardown(stack, &read_leftovers(c, stack).await?);
                if left.is_empty() {
                    return Ok(Poll::Ready(()));
                }
                let n = left.len();
                *last.borrow_mut() = left;
                Ok(Poll::Waiting(format!("{n} removal(s) not visible yet")))
            }
        },
    )
    .await;
    match r {
        Ok(()) => Ok(Vec::new()),
        Err(Error::Timeout { .. }) => Ok(last.into_inner()),
        Err(e) => Err(e),
    }
}

fn same_part(a: &Step, b: &Step) -> bool {
    match (a, b) {
        (Step::Build(x), Step::Build(y)) => std::mem::discriminant(x) == std::mem::discriminant(y),
        (Step::Remove(x), Step::Remove(y)) => {
            std::mem::discriminant(x) == std::mem::discriminant(y)
        }
        (Step::Drain { .. }, Step::Drain { .. }) => true,
        _ => false,
    }
}

/// Waits `secs` before the old egress of a switch goes: route changes reach every
/// host within seconds on AWS, and connections already open finish meanwhile.
async fn drain(secs: u64, progress: Progress<'_>) {
    if secs > 0 {
        progress(&format!(
            "routes moved; keeping the old egress {secs} s for open connections to drain"
        ));
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}

/// What is left of a stack, part by part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// The Lambda wiring.
    pub lambda: lambda::Existing,
    /// The NAT instance.
    pub nat_instance: nat_instance::Existing,
    /// The NAT gateways.
    pub nat_gateways: nat_gateways::Existing,
    /// The flow logs.
    pub flow_logs: flow_logs::Existing,
    /// The alarms.
    pub alarms: alarms::Existing,
    /// IPv6 egress.
    pub ipv6: ipv6::Existing,
}

/// Reads what is left of `stack`.
pub async fn read_leftovers(c: &Clients, stack: &str) -> Result<Leftovers, Error> {
    Ok(Leftovers {
        lambda: lambda::read_existing(c, stack).await?,
        nat_instance: nat_instance::read_existing(c, stack).await?,
        nat_gateways: nat_gateways::read_existing(c, stack).await?,
        flow_logs: flow_logs::read_existing(c, stack).await?,
        alarms: alarms::read_existing(c, stack).await?,
        ipv6: ipv6::read_existing(c, stack).await?,
    })
}

/// Teardown's steps: the Lambda wiring first (the function goes back to its previous
/// configuration before its groups and role go), then the NAT instance (routes
/// released before the instance goes), then the NAT gateways (split tables put back,
/// gateways deleted before their addresses), then IPv6 egress (after the function let
/// go of its dual-stack subnets).
pub fn plan_teardown(stack: &str, l: &Leftovers) -> Vec<Step> {
    let mut out: Vec<Step> = lambda::plan_remove(&l.lambda)
        .into_iter()
        .map(|r| Step::Remove(Remove::Lambda(r)))
        .collect();
    out.extend(
        nat_instance::plan_remove(stack, &l.nat_instance, None)
            .into_iter()
            .map(|r| Step::Remove(Remove::NatInstance(r))),
    );
    out.extend(
        nat_gateways::plan_remove(&l.nat_gateways, None)
            .into_iter()
            .map(|r| Step::Remove(Remove::NatGateways(r))),
    );
    out.extend(
        flow_logs::plan_remove(&l.flow_logs)
            .into_iter()
            .map(|r| Step::Remove(Remove::FlowLogs(r))),
    );
    out.extend(
        alarms::plan_remove(&l.alarms)
            .into_iter()
            .map(|r| Step::Remove(Remove::Alarms(r))),
    );
    out.extend(
        ipv6::plan_remove(&l.ipv6)
            .into_iter()
            .map(|r| Step::Remove(Remove::Ipv6(r))),
    );
    out
}

/// Carries out teardown's `steps` in order.
pub async fn teardown(c: &Clients, steps: &[Step], progress: Progress<'_>) -> Result<(), Error> {
    let mut lambda_r = Vec::new();
    let mut instance_r = Vec::new();
    let mut gateway_r = Vec::new();
    let mut flow_r = Vec::new();
    let mut alarm_r = Vec::new();
    let mut ipv6_r = Vec::new();
    for s in steps {
        match s {
            Step::Remove(Remove::Ipv6(r)) => ipv6_r.push(r.clone()),
            Step::Remove(Remove::Alarms(r)) => alarm_r.push(r.clone()),
            Step::Remove(Remove::FlowLogs(r)) => flow_r.push(r.clone()),
            Step::Remove(Remove::Lambda(r)) => lambda_r.push(r.clone()),
            Step::Remove(Remove::NatInstance(r)) => instance_r.push(r.clone()),
            Step::Remove(Remove::NatGateways(r)) => gateway_r.push(r.clone()),
            _ => {}
        }
    }
    lambda::remove(c, &lambda_r, progress).await?;
    nat_instance::remove(c, &instance_r, progress).await?;
    nat_gateways::remove(c, &gateway_r, progress).await?;
    flow_logs::remove(c, &flow_r, progress).await?;
    alarms::remove(c, &alarm_r, progress).await?;
    ipv6::remove(c, &ipv6_r, progress).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn dev_request() -> Request {
        Request {
            stack: "s".into(),
            egress: Egress::Dev(nat_instance::Spec {
                stack: "s".into(),
                vpc: "vpc-1".into(),
                public_subnets: vec!["subnet-pub".into()],
                private_cidrs: ["10.0.1.0/24".to_string()].into(),
                private_tables: ["rtb-a".to_string()].into(),
                ami: "ami-1".into(),
                instance_type: "t4g.micro".into(),
                eip: false,
                pair: None,
            }),
            lambda: None,
            drain_secs: 30,
            flow_logs: FlowLogs::Leave,
            alarms: None,
            ipv6: None,
        }
    }

    fn prod_request() -> Request {
        Request {
            stack: "s".into(),
            egress: Egress::Prod(nat_gateways::Spec {
                stack: "s".into(),
                vpc: "vpc-1".into(),
                mode: nat_gateways::Mode::Zonal,
                azs: [(
                    "a".to_string(),
                    nat_gateways::AzSpec {
                        public_subnet: "subnet-pub".into(),
                        private: vec![nat_gateways::PrivateSubnet {
                            id: "subnet-a".into(),
                            table: "rtb-a".into(),
                            shared: false,
                        }],
                    },
                )]
                .into(),
            }),
            lambda: None,
            drain_secs: 30,
            flow_logs: FlowLogs::Leave,
            alarms: None,
            ipv6: None,
        }
    }

    fn dev_stack() -> nat_instance::Existing {
        nat_instance::Existing {
            tables: vec![nat_instance::TableState {
                id: "rtb-a".into(),
                default: Some(("eni-1".into(), false)),
            }],
            instances: vec![nat_instance::InstanceState {
                id: "i-1".into(),
                enis: vec!["eni-1".into()],
                live: true,
            }],
            group: true,
            standby_group: false,
            launch_templates: vec![("lt-1".into(), "natd-s".into())],
            security_groups: vec![("sg-1".into(), "natd-s".into())],
            role: true,
            instance_profile: true,
            addresses: vec![],
        }
    }

    #[test]
    fn dev_to_prod_is_gateways_then_routes_then_drain_then_dev_removed_as_data() {
        let req = prod_request();
        let table = nat_gateways::TableObs {
            egress_tag: Some("s".into()),
            default_target: Some("eni-1".into()),
            ..Default::default()
        };
        let o = Observed {
            egress: EgressObserved::Prod(nat_gateways::Observed {
                tables: BTreeMap::from([("rtb-a".to_string(), table)]),
                ..Default::default()
            }),
            lambda: None,
            flow_logs: None,
            flow_logs_existing: None,
            other: Other::NatInstance(dev_stack()),
            alarms: alarms::Observed::default(),
            ipv6: None,
        };
        let steps = plan(&req, &o).expect("plan");
        let pos = |f: &dyn Fn(&Step) -> bool| steps.iter().position(f).expect("present");
        let wait = pos(&|s| {
            matches!(
                s,
                Step::Build(Build::NatGateways(
                    nat_gateways::Action::WaitForGateways { .. }
                ))
            )
        });
        let release = pos(&|s| {
            matches!(
                s,
                Step::Build(Build::NatGateways(
                    nat_gateways::Action::ReleaseFromNatd { .. }
                ))
            )
        });
        let route = pos(&|s| {
            matches!(
                s,
                Step::Build(Build::NatGateways(
                    nat_gateways::Action::SetDefaultRoute { .. }
                ))
            )
        });
        let drain = pos(&|s| matches!(s, Step::Drain { secs: 30 }));
        let first_removal = pos(&|s| matches!(s, Step::Remove(_)));
        assert!(wait < release && release < route && route < drain && drain < first_removal);
        // The old part goes last, and its tables are left to the new egress.
        assert!(matches!(
            steps.last(),
            Some(Step::Remove(Remove::NatInstance(_)))
        ));
        assert!(!steps.iter().any(|s| matches!(
            s,
            Step::Remove(Remove::NatInstance(
                nat_instance::Removal::UntagTable { .. }
                    | nat_instance::Removal::DeleteRoute { .. }
            ))
        )));
        assert!(steps.contains(&Step::Remove(Remove::NatInstance(
            nat_instance::Removal::DeleteGroup {
                name: "natd-s".into()
            }
        ))));
        // As JSON, every step names its kind, part and action.
        let json = serde_json::to_value(&steps).expect("json");
        assert_eq!(json[drain]["step"], "drain");
        assert_eq!(json[first_removal]["step"], "remove");
        assert_eq!(json[first_removal]["part"], "nat_instance");
        assert_eq!(json[wait]["action"], "wait_for_gateways");
    }

    #[test]
    fn zonal_to_regional_routes_first_then_drains_then_retires_the_zonal_gateways() {
        let mut req = prod_request();
        if let Egress::Prod(spec) = &mut req.egress {
            spec.mode = nat_gateways::Mode::Regional;
            let z = spec.azs.remove("a").expect("a");
            spec.azs.insert(nat_gateways::REGIONAL.into(), z);
        }
        let zonal = nat_gateways::Existing {
            gateways: vec![nat_gateways::GatewayState {
                id: "nat-a".into(),
                az: "a".into(),
                state: "available".into(),
            }],
            ..Default::default()
        };
        let o = Observed {
            egress: EgressObserved::Prod(nat_gateways::Observed {
                retiring: zonal,
                ..Default::default()
            }),
            lambda: None,
            flow_logs: None,
            flow_logs_existing: None,
            other: Other::NatInstance(nat_instance::Existing::default()),
            alarms: alarms::Observed::default(),
            ipv6: None,
        };
        let steps = plan(&req, &o).expect("plan");
        let pos = |f: &dyn Fn(&Step) -> bool| steps.iter().position(f).expect("present");
        let create = pos(&|s| {
            matches!(
                s,
                Step::Build(Build::NatGateways(
                    nat_gateways::Action::CreateRegionalNatGateway { .. }
                ))
            )
        });
        let route = pos(&|s| {
            matches!(
                s,
                Step::Build(Build::NatGateways(
                    nat_gateways::Action::SetDefaultRoute { .. }
                ))
            )
        });
        let drain = pos(&|s| matches!(s, Step::Drain { .. }));
        let delete = pos(&|s| {
            matches!(
                s,
                Step::Remove(Remove::NatGateways(
                    nat_gateways::Removal::DeleteNatGateway { .. }
                ))
            )
        });
        assert!(
            create < route && route < drain && drain < delete,
            "{steps:?}"
        );
    }

    #[test]
    fn prod_to_dev_waits_for_natd_before_the_gateways_go() {
        let req = dev_request();
        let gateways = nat_gateways::Existing {
            gateways: vec![nat_gateways::GatewayState {
                id: "nat-a".into(),
                az: "a".into(),
                state: "available".into(),
            }],
            ..Default::default()
        };
        let o = Observed {
            egress: EgressObserved::Dev(nat_instance::Observed::default()),
            lambda: None,
            flow_logs: None,
            flow_logs_existing: None,
            other: Other::NatGateways(gateways),
            alarms: alarms::Observed::default(),
            ipv6: None,
        };
        let steps = plan(&req, &o).expect("plan");
        let tag = steps
            .iter()
            .position(|s| {
                matches!(
                    s,
                    Step::Build(Build::NatInstance(
                        nat_instance::Action::TagRouteTable { .. }
                    ))
                )
            })
            .expect("tag");
        let wait = steps
            .iter()
            .position(|s| {
                *s == Step::Build(Build::NatInstance(nat_instance::Action::WaitForTakeover))
            })
            .expect("wait");
        let delete = steps
            .iter()
            .position(|s| {
                matches!(
                    s,
                    Step::Remove(Remove::NatGateways(
                        nat_gateways::Removal::DeleteNatGateway { .. }
                    ))
                )
            })
            .expect("delete");
        assert!(tag < wait && wait < delete);
        assert!(steps[wait + 1] == Step::Drain { secs: 30 });
    }

    #[test]
    fn a_built_stack_plans_nothing() {
        let req = dev_request();
        let o = Observed {
            egress: EgressObserved::Dev(nat_instance::Observed {
                security_group: Some(nat_instance::GroupRules {
                    id: "sg-1".into(),
                    cidrs: ["10.0.1.0/24".to_string()].into(),
                }),
                role: true,
                role_policy: Some(natd_contract::agent_policy("s")),
                instance_profile: Some(true),
                launch_template: Some(nat_instance::Template {
                    id: "lt-1".into(),
                    image: "ami-1".into(),
                    instance_type: "t4g.micro".into(),
                    groups: ["sg-1".to_string()].into(),
                }),
                group: Some(nat_instance::Group {
                    desired: 1,
                    min_max: (1, 1),
                    subnets: ["subnet-pub".to_string()].into(),
                    launches_first: true,
                }),
                hook: Some(nat_instance::HOOK_TIMEOUT_SECS),
                standby: None,
                address_count: 0,
                pair_rule: false,
                table_tags: [(
                    "rtb-a".to_string(),
                    nat_instance::TableTags {
                        egress: Some("s".into()),
                        routes: None,
                    },
                )]
                .into(),
                address: None,
                foreign: vec![],
            }),
            lambda: None,
            flow_logs: None,
            flow_logs_existing: None,
            other: Other::NatGateways(nat_gateways::Existing::default()),
            alarms: alarms::Observed::default(),
            ipv6: None,
        };
        assert_eq!(plan(&req, &o).expect("plan"), vec![]);
    }

    #[test]
    fn teardown_removes_lambda_then_instance_then_gateways() {
        let l = Leftovers {
            lambda: lambda::Existing {
                role: Some("natd-s-lambda".into()),
                ..Default::default()
            },
            nat_instance: dev_stack(),
            nat_gateways: nat_gateways::Existing {
                gateways: vec![nat_gateways::GatewayState {
                    id: "nat-a".into(),
                    az: "a".into(),
                    state: "available".into(),
                }],
                ..Default::default()
            },
            flow_logs: flow_logs::Existing {
                flow_logs: vec!["fl-1".into()],
                log_group: Some(flow_logs::log_group("s")),
                role: Some(flow_logs::role("s")),
            },
            ipv6: ipv6::Existing {
                routes: vec!["rtb-1".into()],
                gateway: Some("eigw-1".into()),
                ..Default::default()
            },
            alarms: alarms::Existing {
                alarms: vec!["natd-s-failover".into()],
            },
        };
        let steps = plan_teardown("s", &l);
        let part = |s: &Step| match s {
            Step::Remove(Remove::Lambda(_)) => 0,
            Step::Remove(Remove::NatInstance(_)) => 1,
            Step::Remove(Remove::NatGateways(_)) => 2,
            Step::Remove(Remove::FlowLogs(_)) => 3,
            Step::Remove(Remove::Alarms(_)) => 4,
            Step::Remove(Remove::Ipv6(_)) => 5,
            _ => 9,
        };
        let parts: Vec<u8> = steps.iter().map(part).collect();
        assert!(parts.windows(2).all(|w| w[0] <= w[1]), "{parts:?}");
        assert_eq!(parts.first(), Some(&0));
        // IPv6 egress goes after the function let go of its dual-stack subnets.
        assert_eq!(parts.last(), Some(&5));
        // The instance's routes are untagged and deleted, not left as blackholes.
        assert!(steps.contains(&Step::Remove(Remove::NatInstance(
            nat_instance::Removal::DeleteRoute {
                route_table: "rtb-a".into(),
                target: "eni-1".into()
            }
        ))));
        assert_eq!(plan_teardown("s", &Leftovers::default()), vec![]);
    }
}
