//! The dev egress: one self-healing NAT instance (natd) in an Auto Scaling group. Its
//! security group admits the private subnets; its role carries exactly natd's policy;
//! its launch template requires IMDSv2 (hop limit 1) and tells natd its stack; its
//! group launches through natd's lifecycle hook; the private route tables carry
//! `natd:egress=STACK`, and natd takes their default routes over by itself.
//!
//! Owns: [`Spec`] (from the topology), [`Observed`], [`Action`], the pure [`plan`],
//! [`read`], [`apply`]; what it leaves behind: [`Existing`], the pure [`plan_remove`]
//! and [`remove`]. Everything it creates carries `natd:stack=STACK`; a same-named
//! resource without that tag is someone else's and is refused, never adopted.

use super::Progress;
use crate::aws::names::{
    EGRESS_TAG, NAME_TAG, Names, ROUTES_TAG, STACK_TAG, ec2_tag, ec2_tags, extra_tags, iam_tags,
    of_stack, tag_value,
};
use crate::aws::read::{self, AddressState};
use crate::aws::wait::{self, Poll};
use crate::aws::{Clients, Error, err, found};
use crate::topology::Topology;
use natd_contract::LAUNCHING_TRANSITION;
use natd_contract::boot::BootConfig;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Name of the lifecycle hook natd completes.
pub const HOOK: &str = "natd-ready";
/// How long a launch may wait for natd before the group abandons it: natd's start-up
/// retries take about 2 minutes, plus boot.
pub const HOOK_TIMEOUT_SECS: i32 = 600;
/// How long a switch from prod waits for natd to take the routes over: a launch is
/// boot (~30 s) plus natd's start-up retries (~2 min), with margin.
const TAKEOVER_WAIT: Duration = Duration::from_secs(900);
/// How long setup retries a call that names a new IAM role or instance profile: IAM
/// propagates within seconds, occasionally a minute or two.
const IAM_PROPAGATION_WAIT: Duration = Duration::from_secs(180);
/// How long teardown waits for the NAT instances to terminate before it removes the
/// security group they use (EC2 usually needs 30-90 s).
const TERMINATE_WAIT: Duration = Duration::from_secs(300);

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spec {
    /// Stack name.
    pub stack: String,
    /// The VPC.
    pub vpc: String,
    /// Where the NAT instance may run.
    pub public_subnets: Vec<String>,
    /// CIDRs the NAT instance's security group admits.
    pub private_cidrs: BTreeSet<String>,
    /// Route tables of the private subnets: natd takes them over.
    pub private_tables: BTreeSet<String>,
    /// The natd AMI.
    pub ami: String,
    /// Instance type.
    pub instance_type: String,
    /// Give the NAT instance a stable egress address (an Elastic IP natd holds).
    pub eip: bool,
    /// A hot standby pair instead of one instance.
    pub pair: Option<Pair>,
}

/// A hot standby pair: two groups of one, the stack's Elastic IPs on secondary
/// addresses that move between them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pair {
    /// The first instance's subnet.
    pub subnet_a: String,
    /// The second instance's subnet: the same one by default (the egress address, a
    /// private address of that subnet, moves between them), another AZ's with spread.
    pub subnet_b: String,
    /// The two are in different AZs: an AZ loss is survived, but the egress address
    /// cannot move across subnets, so connections reset on failover.
    pub spread: bool,
    /// Egress addresses (Elastic IPs) the pair SNATs across; `None` keeps the stack's
    /// (one for a new pair).
    pub egress_ips: Option<u32>,
    /// IPv4 addresses the instance type holds per network interface (each member
    /// needs 1 + the egress addresses), when setup read it.
    pub addresses_per_interface: Option<u32>,
}

/// UDP ports the pair's security group admits from its own members: heartbeats,
/// conntrackd's sync, the VXLAN link of the forwarding check.
pub use natd_contract::pair::PORTS as PAIR_PORTS;

impl Spec {
    /// The spec for `topo`.
    pub fn new(stack: &str, topo: &Topology, ami: &str, instance_type: &str, eip: bool) -> Self {
        let private: Vec<_> = topo.subnets.values().filter(|s| !s.public).collect();
        Spec {
            stack: stack.to_string(),
            vpc: topo.vpc_id.clone(),
            public_subnets: topo.public().cloned().collect(),
            private_cidrs: private.iter().map(|s| s.cidr.clone()).collect(),
            private_tables: private.iter().map(|s| s.table.clone()).collect(),
            ami: ami.to_string(),
            instance_type: instance_type.to_string(),
            eip,
            pair: None,
        }
    }

    /// The standby's group (pair mode).
    pub fn standby_name(&self) -> String {
        Names(&self.stack).standby()
    }

    /// Where the (first) group launches.
    pub fn group_subnets(&self) -> Vec<String> {
        match &self.pair {
            Some(p) => vec![p.subnet_a.clone()],
            None => self.public_subnets.clone(),
        }
    }

    /// Elastic IPs the stack holds, given `have` of them now.
    pub fn addresses(&self, have: usize) -> usize {
        match &self.pair {
            Some(p) => p.egress_ips.map_or(have.max(1), |n| n as usize),
            None => usize::from(self.eip),
        }
    }

    /// Name of every named resource of the part.
    pub fn name(&self) -> String {
        Names(&self.stack).nat()
    }
}

/// The NAT security group as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupRules {
    /// `sg-...`
    pub id: String,
    /// CIDRs admitted (all traffic).
    pub cidrs: BTreeSet<String>,
}

/// The launch template's default version as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Template {
    /// `lt-...`
    pub id: String,
    /// Its image.
    pub image: String,
    /// Its instance type.
    pub instance_type: String,
    /// The security groups of its network interface.
    pub groups: BTreeSet<String>,
}

/// The Auto Scaling group as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    /// Desired capacity.
    pub desired: i32,
    /// Minimum and maximum size.
    pub min_max: (i32, i32),
    /// Its subnets.
    pub subnets: BTreeSet<String>,
    /// Its instance maintenance policy launches a replacement before terminating the
    /// instance it replaces ([`launch_first`]).
    pub launches_first: bool,
}

/// The tags of a private route table that say who manages it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableTags {
    /// `natd:egress` (a dev stack's natd takes it over).
    pub egress: Option<String>,
    /// `natd:routes` (a prod stack routes it).
    pub routes: Option<String>,
}

/// What exists now, as read by [`read`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The NAT security group.
    pub security_group: Option<GroupRules>,
    /// The role exists (with the stack's tag).
    pub role: bool,
    /// The role's inline policy document.
    pub role_policy: Option<serde_json::Value>,
    /// The instance profile exists; whether it carries the role.
    pub instance_profile: Option<bool>,
    /// The launch template.
    pub launch_template: Option<Template>,
    /// The group.
    pub group: Option<Group>,
    /// Heartbeat timeout of natd's launch hook, when the group has it.
    pub hook: Option<i32>,
    /// The standby's group and its hook's timeout (pair mode).
    pub standby: Option<(Group, Option<i32>)>,
    /// How many Elastic IPs are tagged for the stack.
    pub address_count: usize,
    /// The security group admits the pair's UDP ports from itself.
    pub pair_rule: bool,
    /// Tags of each private route table.
    pub table_tags: BTreeMap<String, TableTags>,
    /// The stack's Elastic IP for natd (`natd:egress=<stack>`).
    pub address: Option<String>,
    /// Same-named resources without the stack's tag: (kind, name or id).
    pub foreign: Vec<(&'static str, String)>,
}

/// One change setup makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Create the NAT security group.
    CreateSecurityGroup,
    /// Admit these CIDRs (all traffic) on the NAT security group.
    AuthorizeIngress {
        /// CIDRs.
        cidrs: Vec<String>,
    },
    /// Stop admitting CIDRs that are no longer private subnets of the stack.
    RevokeIngress {
        /// CIDRs.
        cidrs: Vec<String>,
    },
    /// Create the instance role (trust: EC2).
    CreateRole,
    /// Put natd's policy on the role.
    PutRolePolicy,
    /// Create the instance profile with the role.
    CreateInstanceProfile,
    /// Create the launch template.
    CreateLaunchTemplate,
    /// New default version of the launch template (image, type or security group).
    UpdateLaunchTemplate,
    /// Create the group (capacity 0, so the hook exists before the first launch).
    CreateGroup,
    /// Put the group in the spec's public subnets.
    UpdateGroupSubnets {
        /// The subnets.
        subnets: Vec<String>,
    },
    /// Add (or correct) natd's launch lifecycle hook.
    PutLifecycleHook,
    /// Set min = max = desired = 1.
    ScaleToOne,
    /// Admit the pair's UDP ports (heartbeats, state sync, forwarding check) from the
    /// security group itself: the pair only.
    AuthorizePair,
    /// Create the standby's group (pair mode; capacity 0 until its hook exists).
    CreateStandbyGroup {
        /// Its subnet.
        subnets: Vec<String>,
    },
    /// Put the standby's group in its subnet.
    UpdateStandbyGroupSubnets {
        /// The subnets.
        subnets: Vec<String>,
    },
    /// natd's launch lifecycle hook on the standby's group.
    PutStandbyLifecycleHook,
    /// The standby's group: min = max = desired = 1.
    ScaleStandbyToOne,
    /// Allocate an Elastic IP natd holds (`natd:egress=<stack>`).
    AllocateAddress,
    /// Tag a private route table `natd:egress=<stack>`.
    TagRouteTable {
        /// The table.
        route_table: String,
    },
    /// Wait until natd holds the default route of every tagged table.
    WaitForTakeover,
}

/// Why setup refuses to go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A private route table already belongs to another stack.
    #[error(
        "route table {table} is tagged {tag}={other}: it belongs to stack {other}; remove that stack first or leave its subnets out"
    )]
    TableOfOtherStack {
        /// The table.
        table: String,
        /// The tag.
        tag: &'static str,
        /// The other stack.
        other: String,
    },
    /// A resource with the stack's name exists and is not the stack's.
    #[error(transparent)]
    Foreign(#[from] super::Foreign),
    /// The stack is a hot standby pair and `--ha` was left out.
    #[error(
        "the dev egress of this stack is a hot standby pair (--ha): run setup with --ha, or teardown first to go back to one instance"
    )]
    PairToSingle,
    /// The stack is one NAT instance and `--ha` was given.
    #[error(
        "the dev egress of this stack is one NAT instance: --ha builds a pair from scratch (teardown, then setup --env dev --ha); its running natd would not join a pair"
    )]
    SingleToPair,
    /// `--egress-ips` below what the pair holds.
    #[error(
        "--egress-ips {asked}: the pair holds {have} egress addresses, and releasing one would cut the connections on it; setup only adds addresses (teardown releases them all)"
    )]
    FewerEgressIps {
        /// Addresses the stack holds.
        have: usize,
        /// What was asked.
        asked: usize,
    },
}

/// The changes that turn `o` into `spec`, in dependency order.
pub fn plan(spec: &Spec, o: &Observed) -> Result<Vec<Action>, Refusal> {
    if let Some(f) = super::Foreign::first(&o.foreign, &spec.stack) {
        return Err(f.into());
    }
    for (table, tags) in &o.table_tags {
        for (tag, value) in [(EGRESS_TAG, &tags.egress), (ROUTES_TAG, &tags.routes)] {
            if let Some(other) = value.as_ref().filter(|t| **t != spec.stack) {
                return Err(Refusal::TableOfOtherStack {
                    table: table.clone(),
                    tag,
                    other: other.clone(),
                });
            }
        }
    }
    let mut out = Vec::new();
    let admitted = match &o.security_group {
        None => {
            out.push(Action::CreateSecurityGroup);
            BTreeSet::new()
        }
        Some(g) => g.cidrs.clone(),
    };
    let missing: Vec<String> = spec.private_cidrs.difference(&admitted).cloned().collect();
    if !missing.is_empty() {
        out.push(Action::AuthorizeIngress { cidrs: missing });
    }
    let extra: Vec<String> = admitted.difference(&spec.private_cidrs).cloned().collect();
    if !extra.is_empty() {
        out.push(Action::RevokeIngress { cidrs: extra });
    }
    if !o.role {
        out.push(Action::CreateRole);
    }
    if o.role_policy.as_ref() != Some(&natd_contract::agent_policy(&spec.stack)) {
        out.push(Action::PutRolePolicy);
    }
    if o.instance_profile != Some(true) {
        out.push(Action::CreateInstanceProfile);
    }
    match (&o.launch_template, &o.security_group) {
        (None, _) => out.push(Action::CreateLaunchTemplate),
        (Some(t), sg) => {
            let sg_ok = sg
                .as_ref()
                .is_some_and(|g| t.groups == BTreeSet::from([g.id.clone()]));
            if t.image != spec.ami || t.instance_type != spec.instance_type || !sg_ok {
                out.push(Action::UpdateLaunchTemplate);
            }
        }
    }
    match (&spec.pair, &o.standby) {
        (None, Some(_)) => return Err(Refusal::PairToSingle),
        (Some(_), None) if o.group.is_some() => return Err(Refusal::SingleToPair),
        _ => {}
    }
    if spec.pair.is_some() && !o.pair_rule {
        out.push(Action::AuthorizePair);
    }
    let wanted_subnets: BTreeSet<String> = spec.group_subnets().into_iter().collect();
    match &o.group {
        None => out.push(Action::CreateGroup),
        Some(g) if g.subnets != wanted_subnets => out.push(Action::UpdateGroupSubnets {
            subnets: spec.group_subnets(),
        }),
        Some(_) => {}
    }
    if o.hook != Some(HOOK_TIMEOUT_SECS) {
        out.push(Action::PutLifecycleHook);
    }
    if let Some(p) = &spec.pair {
        let wanted = vec![p.subnet_b.clone()];
        match &o.standby {
            None => out.push(Action::CreateStandbyGroup {
                subnets: wanted.clone(),
            }),
            Some((g, _)) if g.subnets != wanted.iter().cloned().collect() => {
                out.push(Action::UpdateStandbyGroupSubnets {
                    subnets: wanted.clone(),
                })
            }
            Some(_) => {}
        }
        if o.standby
            .as_ref()
            .is_none_or(|(_, h)| *h != Some(HOOK_TIMEOUT_SECS))
        {
            out.push(Action::PutStandbyLifecycleHook);
        }
    }
    if spec.pair.is_some() && spec.addresses(o.address_count) < o.address_count {
        return Err(Refusal::FewerEgressIps {
            have: o.address_count,
            asked: spec.addresses(o.address_count),
        });
    }
    for _ in o.address_count..spec.addresses(o.address_count) {
        out.push(Action::AllocateAddress);
    }
    if o.group
        .as_ref()
        .is_none_or(|g| g.desired != 1 || g.min_max != (1, 1) || !g.launches_first)
    {
        out.push(Action::ScaleToOne);
    }
    if spec.pair.is_some()
        && o.standby
            .as_ref()
            .is_none_or(|(g, _)| g.desired != 1 || g.min_max != (1, 1) || !g.launches_first)
    {
        out.push(Action::ScaleStandbyToOne);
    }
    for t in &spec.private_tables {
        if o.table_tags.get(t).is_none_or(|x| x.egress.is_none()) {
            out.push(Action::TagRouteTable {
                route_table: t.clone(),
            });
        }
    }
    Ok(out)
}

fn group_of(g: &aws_sdk_autoscaling::types::AutoScalingGroup) -> Group {
    Group {
        desired: g.desired_capacity().unwrap_or(0),
        min_max: (g.min_size().unwrap_or(0), g.max_size().unwrap_or(0)),
        subnets: g
            .vpc_zone_identifier()
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        launches_first: g.instance_maintenance_policy().is_some_and(|p| {
            p.min_healthy_percentage() == Some(MIN_HEALTHY)
                && p.max_healthy_percentage() == Some(MAX_HEALTHY)
        }),
    }
}

/// The group's instance maintenance policy: at least 100 % healthy, up to 200 %, so
/// that a group of one launches the replacement first (instance refresh, health
/// replacement) and its natd takes over before the old instance goes (Auto Scaling
/// User Guide, "Instance maintenance policies"; without one a group of one
/// terminates first).
pub const MIN_HEALTHY: i32 = 100;
/// See [`MIN_HEALTHY`].
pub const MAX_HEALTHY: i32 = 200;

fn launch_first() -> aws_sdk_autoscaling::types::InstanceMaintenancePolicy {
    aws_sdk_autoscaling::types::InstanceMaintenancePolicy::builder()
        .min_healthy_percentage(MIN_HEALTHY)
        .max_healthy_percentage(MAX_HEALTHY)
        .build()
}

/// Reads what exists of the part.
pub async fn read(c: &Clients, spec: &Spec) -> Result<Observed, Error> {
    let name = spec.name();
    let stack = spec.stack.as_str();
    let mut o = Observed::default();
    for g in read::groups_named(c, Some(&spec.vpc), &[&name]).await? {
        let id = g.group_id().unwrap_or_default().to_string();
        if !of_stack(g.tags(), stack) {
            o.foreign.push(("security group", format!("{name} ({id})")));
            continue;
        }
        let cidrs = g
            .ip_permissions()
            .iter()
            .filter(|p| p.ip_protocol() == Some("-1"))
            .flat_map(|p| p.ip_ranges())
            .filter_map(|r| r.cidr_ip().map(str::to_string))
            .collect();
        o.pair_rule = PAIR_PORTS.iter().all(|(port, _)| {
            g.ip_permissions().iter().any(|p| {
                p.ip_protocol() == Some("udp")
                    && p.from_port() == Some(i32::from(*port))
                    && p.to_port() == Some(i32::from(*port))
                    && p.user_id_group_pairs()
                        .iter()
                        .any(|u| u.group_id() == Some(id.as_str()))
            })
        });
        o.security_group = Some(GroupRules { id, cidrs });
    }
    if let Some((_, tags)) = read::role(c, &name).await? {
        if tags.get(STACK_TAG).map(String::as_str) == Some(stack) {
            o.role = true;
            o.role_policy = read::role_policy(c, &name, &name).await?;
        } else {
            o.foreign.push(("IAM role", name.clone()));
        }
    }
    let profile = c
        .iam
        .get_instance_profile()
        .instance_profile_name(&name)
        .send()
        .await;
    if let Some(p) = found(profile, "GetInstanceProfile", &name)? {
        let p = p.instance_profile();
        let ours = p.is_some_and(|p| {
            p.tags()
                .iter()
                .any(|t| t.key() == STACK_TAG && t.value() == stack)
        });
        if ours {
            o.instance_profile =
                Some(p.is_some_and(|p| p.roles().iter().any(|r| r.role_name() == name)));
        } else {
            o.foreign.push(("instance profile", name.clone()));
        }
    }
    for lt in read::launch_templates_named(c, &name).await? {
        let id = lt.launch_template_id().unwrap_or_default().to_string();
        if !of_stack(lt.tags(), stack) {
            o.foreign
                .push(("launch template", format!("{name} ({id})")));
            continue;
        }
        let data = read::default_template_data(c, &id).await?;
        let data = data.as_ref();
        o.launch_template = Some(Template {
            id,
            image: data
                .and_then(|d| d.image_id())
                .unwrap_or_default()
                .to_string(),
            instance_type: data
                .and_then(|d| d.instance_type())
                .map(|t| t.as_str().to_string())
                .unwrap_or_default(),
            groups: data
                .map(|d| {
                    d.network_interfaces()
                        .iter()
                        .flat_map(|n| n.groups())
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    let standby = spec.standby_name();
    if let Some(g) = read::auto_scaling_group(c, &standby).await? {
        if read::group_of_stack(&g, stack) {
            let hooks = c
                .asg
                .describe_lifecycle_hooks()
                .auto_scaling_group_name(&standby)
                .send()
                .await
                .map_err(err("DescribeLifecycleHooks", &standby))?;
            o.standby = Some((
                group_of(&g),
                hooks
                    .lifecycle_hooks()
                    .iter()
                    .find(|h| h.lifecycle_hook_name() == Some(HOOK))
                    .map(|h| h.heartbeat_timeout().unwrap_or(0)),
            ));
        } else {
            o.foreign.push(("Auto Scaling group", standby.clone()));
        }
    }
    if let Some(g) = read::auto_scaling_group(c, &name).await? {
        if read::group_of_stack(&g, stack) {
            o.group = Some(group_of(&g));
            let hooks = c
                .asg
                .describe_lifecycle_hooks()
                .auto_scaling_group_name(&name)
                .send()
                .await
                .map_err(err("DescribeLifecycleHooks", &name))?;
            o.hook = hooks
                .lifecycle_hooks()
                .iter()
                .find(|h| h.lifecycle_hook_name() == Some(HOOK))
                .map(|h| h.heartbeat_timeout().unwrap_or(0));
        } else {
            o.foreign.push(("Auto Scaling group", name.clone()));
        }
    }
    let addresses: Vec<String> = read::stack_addresses(c, stack)
        .await?
        .iter()
        .filter(|a| tag_value(a.tags(), EGRESS_TAG) == Some(stack))
        .filter_map(|a| a.allocation_id())
        .map(str::to_string)
        .collect();
    o.address = addresses.first().cloned();
    o.address_count = addresses.len();
    if !spec.private_tables.is_empty() {
        let ids: Vec<&str> = spec.private_tables.iter().map(String::as_str).collect();
        let tables = read::route_tables(
            c,
            vec![crate::aws::names::filter("route-table-id", &ids)],
            &spec.vpc,
        )
        .await?;
        for t in tables {
            o.table_tags.insert(
                t.route_table_id().unwrap_or_default().to_string(),
                TableTags {
                    egress: tag_value(t.tags(), EGRESS_TAG).map(str::to_string),
                    routes: tag_value(t.tags(), ROUTES_TAG).map(str::to_string),
                },
            );
        }
    }
    Ok(o)
}

/// Why the NAT instance cannot be launched as asked.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// The image does not exist, or this account cannot read it.
    #[error("AMI {ami} not found in this region, or not readable to this account (--ami)")]
    NoImage {
        /// The image.
        ami: String,
    },
    /// The instance type does not exist in the region.
    #[error("instance type {instance_type} does not exist in this region (--instance-type)")]
    NoInstanceType {
        /// The type.
        instance_type: String,
    },
    /// The image's architecture is not one the type runs.
    #[error(
        "AMI {ami} is {arch}, and {instance_type} runs only {runs}: natd's AMI is arm64, for Graviton types such as t4g.micro (--ami, --instance-type)"
    )]
    Architecture {
        /// The image.
        ami: String,
        /// Its architecture.
        arch: String,
        /// The type.
        instance_type: String,
        /// What the type runs.
        runs: String,
    },
    /// A call failed.
    #[error(transparent)]
    Api(#[from] Error),
}

/// Checks, before anything changes, that `ami` exists, is readable, and runs on
/// `instance_type`, which exists in the region.
pub async fn validate(c: &Clients, ami: &str, instance_type: &str) -> Result<(), Invalid> {
    let images = c.ec2.describe_images().image_ids(ami).send().await;
    let image = match images.map_err(crate::aws::ApiFailure::from) {
        Ok(r) => r.images().first().cloned(),
        Err(e)
            if e.code
                .as_deref()
                .is_some_and(|c| c.starts_with("InvalidAMIID")) =>
        {
            None
        }
        Err(source) => {
            return Err(Invalid::Api(Error::Call {
                op: "DescribeImages",
                target: ami.to_string(),
                source,
            }));
        }
    };
    let Some(image) = image else {
        return Err(Invalid::NoImage {
            ami: ami.to_string(),
        });
    };
    let types = c
        .ec2
        .describe_instance_types()
        .instance_types(aws_sdk_ec2::types::InstanceType::from(instance_type))
        .send()
        .await;
    let kind = match types.map_err(crate::aws::ApiFailure::from) {
        Ok(r) => r.instance_types().first().cloned(),
        Err(e)
            if e.code
                .as_deref()
                .is_some_and(|c| c.contains("InstanceType")) =>
        {
            None
        }
        Err(source) => {
            return Err(Invalid::Api(Error::Call {
                op: "DescribeInstanceTypes",
                target: instance_type.to_string(),
                source,
            }));
        }
    };
    let Some(kind) = kind else {
        return Err(Invalid::NoInstanceType {
            instance_type: instance_type.to_string(),
        });
    };
    let runs: Vec<String> = kind
        .processor_info()
        .map(|p| {
            p.supported_architectures()
                .iter()
                .map(|a| a.as_str().to_string())
                .collect()
        })
        .unwrap_or_default();
    let arch = image
        .architecture()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    if !runs.is_empty() && !runs.contains(&arch) {
        return Err(Invalid::Architecture {
            ami: ami.to_string(),
            arch,
            instance_type: instance_type.to_string(),
            runs: runs.join(", "),
        });
    }
    Ok(())
}

/// AWS's answer while a new instance profile has not propagated in IAM, and why in
/// words.
fn profile_not_propagated(e: &crate::aws::ApiFailure) -> Option<&'static str> {
    (e.is("ValidationError") && e.message.contains("Invalid IAM Instance Profile")).then_some(
        "Auto Scaling sees a new instance profile once IAM has propagated it (seconds, sometimes a minute or two)",
    )
}

/// natd's boot configuration for this stack (the contract's one struct).
pub fn boot_config(spec: &Spec) -> BootConfig {
    match &spec.pair {
        Some(p) => BootConfig::pair(&spec.stack, p.egress_ips.unwrap_or(1)),
        // Egress only by the Elastic IP: nothing new leaves before it is on the instance.
        None => BootConfig::single(&spec.stack, spec.eip),
    }
}

/// The user data that gives natd its boot configuration (written before
/// network-online, so before natd.service starts).
fn user_data(spec: &Spec) -> String {
    aws_smithy_types::base64::encode(boot_config(spec).cloud_config())
}

/// Creates Auto Scaling group `group` (capacity 0: natd's hook must exist before the
/// first launch) from the stack's launch template.
async fn create_group(
    c: &Clients,
    spec: &Spec,
    group: &str,
    subnets: &[String],
    lt_id: Option<&str>,
    progress: Progress<'_>,
) -> Result<(), Error> {
    let asg_tag = |key: &str, value: &str| {
        aws_sdk_autoscaling::types::Tag::builder()
            .key(key)
            .value(value)
            .propagate_at_launch(true)
            .resource_id(group)
            .resource_type("auto-scaling-group")
            .build()
    };
    let lt = aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
        .launch_template_id(lt_id.unwrap_or_default())
        .version("$Default")
        .build();
    // A new instance profile takes seconds to propagate in IAM; until it has, AWS
    // refuses a group whose template names it.
    wait::retry_while(
        "the instance profile to propagate in IAM",
        group,
        IAM_PROPAGATION_WAIT,
        progress,
        profile_not_propagated,
        || async {
            c.asg
                .create_auto_scaling_group()
                .auto_scaling_group_name(group)
                .launch_template(lt.clone())
                .min_size(0)
                .max_size(1)
                .desired_capacity(0)
                .instance_maintenance_policy(launch_first())
                .vpc_zone_identifier(subnets.join(","))
                .set_tags(Some(
                    [
                        vec![asg_tag(STACK_TAG, &spec.stack), asg_tag(NAME_TAG, group)],
                        extra_tags().iter().map(|(k, v)| asg_tag(k, v)).collect(),
                    ]
                    .concat(),
                ))
                .send()
                .await
                .map_err(err("CreateAutoScalingGroup", group))
        },
    )
    .await?;
    Ok(())
}

async fn group_subnets(c: &Clients, group: &str, subnets: &[String]) -> Result<(), Error> {
    c.asg
        .update_auto_scaling_group()
        .auto_scaling_group_name(group)
        .vpc_zone_identifier(subnets.join(","))
        .send()
        .await
        .map_err(err("UpdateAutoScalingGroup", group))?;
    Ok(())
}

async fn put_hook(c: &Clients, group: &str) -> Result<(), Error> {
    c.asg
        .put_lifecycle_hook()
        .auto_scaling_group_name(group)
        .lifecycle_hook_name(HOOK)
        .lifecycle_transition(LAUNCHING_TRANSITION)
        .heartbeat_timeout(HOOK_TIMEOUT_SECS)
        .default_result("ABANDON")
        .send()
        .await
        .map_err(err("PutLifecycleHook", group))?;
    Ok(())
}

async fn scale_to_one(c: &Clients, group: &str) -> Result<(), Error> {
    c.asg
        .update_auto_scaling_group()
        .auto_scaling_group_name(group)
        .min_size(1)
        .max_size(1)
        .desired_capacity(1)
        .instance_maintenance_policy(launch_first())
        .send()
        .await
        .map_err(err("UpdateAutoScalingGroup", group))?;
    Ok(())
}

/// Carries out `actions` in order.
pub async fn apply(
    c: &Clients,
    spec: &Spec,
    o: &Observed,
    actions: &[Action],
    progress: Progress<'_>,
) -> Result<(), Error> {
    use aws_sdk_ec2::types::{
        IpPermission, IpRange, LaunchTemplateHttpTokensState,
        LaunchTemplateIamInstanceProfileSpecificationRequest,
        LaunchTemplateInstanceMetadataOptionsRequest,
        LaunchTemplateInstanceNetworkInterfaceSpecificationRequest, RequestLaunchTemplateData,
        ResourceType,
    };
    let name = spec.name();
    let mut sg_id = o.security_group.as_ref().map(|g| g.id.clone());
    let mut lt_id = o.launch_template.as_ref().map(|t| t.id.clone());
    let template_data = |sg: &str| {
        RequestLaunchTemplateData::builder()
            .image_id(&spec.ami)
            .instance_type(aws_sdk_ec2::types::InstanceType::from(
                spec.instance_type.as_str(),
            ))
            .iam_instance_profile(
                LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                    .name(&name)
                    .build(),
            )
            .metadata_options(
                LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_tokens(LaunchTemplateHttpTokensState::Required)
                    .http_put_response_hop_limit(1)
                    .build(),
            )
            .network_interfaces(
                LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                    .device_index(0)
                    .associate_public_ip_address(true)
                    .groups(sg)
                    .build(),
            )
            .user_data(user_data(spec))
            // natd's policy lets it change only ENIs carrying the stack's tag.
            .tag_specifications(
                aws_sdk_ec2::types::LaunchTemplateTagSpecificationRequest::builder()
                    .resource_type(ResourceType::NetworkInterface)
                    .set_tags(Some(
                        [
                            vec![ec2_tag(STACK_TAG, &spec.stack), ec2_tag(NAME_TAG, &name)],
                            extra_tags().iter().map(|(k, v)| ec2_tag(k, v)).collect(),
                        ]
                        .concat(),
                    ))
                    .build(),
            )
            .build()
    };
    let cidr_rule = |cidrs: &[String]| {
        let mut perm = IpPermission::builder().ip_protocol("-1");
        for cidr in cidrs {
            perm = perm.ip_ranges(
                IpRange::builder()
                    .cidr_ip(cidr)
                    .description("private subnet")
                    .build(),
            );
        }
        perm.build()
    };
    for a in actions {
        match a {
            Action::CreateSecurityGroup => {
                let r = c
                    .ec2
                    .create_security_group()
                    .group_name(&name)
                    .description(format!(
                        "natd NAT instance of stack {}: admits the private subnets",
                        spec.stack
                    ))
                    .vpc_id(&spec.vpc)
                    .tag_specifications(ec2_tags(
                        ResourceType::SecurityGroup,
                        &spec.stack,
                        &name,
                        &[],
                    ))
                    .send()
                    .await
                    .map_err(err("CreateSecurityGroup", &name))?;
                sg_id = r.group_id().map(str::to_string);
            }
            Action::AuthorizeIngress { cidrs } => {
                let sg = sg_id.clone().unwrap_or_default();
                c.ec2
                    .authorize_security_group_ingress()
                    .group_id(&sg)
                    .ip_permissions(cidr_rule(cidrs))
                    .send()
                    .await
                    .map_err(err("AuthorizeSecurityGroupIngress", &sg))?;
            }
            Action::RevokeIngress { cidrs } => {
                let sg = sg_id.clone().unwrap_or_default();
                c.ec2
                    .revoke_security_group_ingress()
                    .group_id(&sg)
                    .ip_permissions(cidr_rule(cidrs))
                    .send()
                    .await
                    .map_err(err("RevokeSecurityGroupIngress", &sg))?;
            }
            Action::CreateRole => {
                let trust = serde_json::json!({
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]
                });
                c.iam
                    .create_role()
                    .role_name(&name)
                    .assume_role_policy_document(trust.to_string())
                    .set_tags(Some(iam_tags("CreateRole", &name, &spec.stack, &[])?))
                    .send()
                    .await
                    .map_err(err("CreateRole", &name))?;
            }
            Action::PutRolePolicy => {
                c.iam
                    .put_role_policy()
                    .role_name(&name)
                    .policy_name(&name)
                    .policy_document(natd_contract::agent_policy(&spec.stack).to_string())
                    .send()
                    .await
                    .map_err(err("PutRolePolicy", &name))?;
            }
            Action::CreateInstanceProfile => {
                if o.instance_profile.is_none() {
                    c.iam
                        .create_instance_profile()
                        .instance_profile_name(&name)
                        .set_tags(Some(iam_tags(
                            "CreateInstanceProfile",
                            &name,
                            &spec.stack,
                            &[],
                        )?))
                        .send()
                        .await
                        .map_err(err("CreateInstanceProfile", &name))?;
                }
                c.iam
                    .add_role_to_instance_profile()
                    .instance_profile_name(&name)
                    .role_name(&name)
                    .send()
                    .await
                    .map_err(err("AddRoleToInstanceProfile", &name))?;
            }
            Action::CreateLaunchTemplate => {
                let sg = sg_id.clone().unwrap_or_default();
                let r = c
                    .ec2
                    .create_launch_template()
                    .launch_template_name(&name)
                    .launch_template_data(template_data(&sg))
                    .tag_specifications(ec2_tags(
                        ResourceType::LaunchTemplate,
                        &spec.stack,
                        &name,
                        &[],
                    ))
                    .send()
                    .await
                    .map_err(err("CreateLaunchTemplate", &name))?;
                lt_id = r
                    .launch_template()
                    .and_then(|t| t.launch_template_id())
                    .map(str::to_string);
            }
            Action::UpdateLaunchTemplate => {
                let sg = sg_id.clone().unwrap_or_default();
                let id = lt_id.clone().unwrap_or_default();
                let v = c
                    .ec2
                    .create_launch_template_version()
                    .launch_template_id(&id)
                    .launch_template_data(template_data(&sg))
                    .send()
                    .await
                    .map_err(err("CreateLaunchTemplateVersion", &id))?;
                let number = v
                    .launch_template_version()
                    .and_then(|v| v.version_number())
                    .unwrap_or(1);
                c.ec2
                    .modify_launch_template()
                    .launch_template_id(&id)
                    .default_version(number.to_string())
                    .send()
                    .await
                    .map_err(err("ModifyLaunchTemplate", &id))?;
            }
            Action::CreateGroup => {
                create_group(
                    c,
                    spec,
                    &name,
                    &spec.group_subnets(),
                    lt_id.as_deref(),
                    progress,
                )
                .await?;
            }
            Action::CreateStandbyGroup { subnets } => {
                let standby = spec.standby_name();
                create_group(c, spec, &standby, subnets, lt_id.as_deref(), progress).await?;
            }
            Action::UpdateGroupSubnets { subnets } => group_subnets(c, &name, subnets).await?,
            Action::UpdateStandbyGroupSubnets { subnets } => {
                group_subnets(c, &spec.standby_name(), subnets).await?
            }
            Action::PutLifecycleHook => put_hook(c, &name).await?,
            Action::PutStandbyLifecycleHook => put_hook(c, &spec.standby_name()).await?,
            Action::ScaleToOne => scale_to_one(c, &name).await?,
            Action::ScaleStandbyToOne => scale_to_one(c, &spec.standby_name()).await?,
            Action::AuthorizePair => {
                let sg = sg_id.clone().unwrap_or_default();
                let perms: Vec<IpPermission> = PAIR_PORTS
                    .iter()
                    .map(|(port, what)| {
                        IpPermission::builder()
                            .ip_protocol("udp")
                            .from_port(i32::from(*port))
                            .to_port(i32::from(*port))
                            .user_id_group_pairs(
                                aws_sdk_ec2::types::UserIdGroupPair::builder()
                                    .group_id(&sg)
                                    .description(*what)
                                    .build(),
                            )
                            .build()
                    })
                    .collect();
                let r = c
                    .ec2
                    .authorize_security_group_ingress()
                    .group_id(&sg)
                    .set_ip_permissions(Some(perms))
                    .send()
                    .await;
                // A rule another run added first is as good as ours.
                if let Err(e) = r {
                    let failure: crate::aws::ApiFailure = e.into();
                    if !failure.is("InvalidPermission.Duplicate") {
                        return Err(Error::Call {
                            op: "AuthorizeSecurityGroupIngress",
                            target: sg,
                            source: failure,
                        });
                    }
                }
            }
            Action::AllocateAddress => {
                c.ec2
                    .allocate_address()
                    .domain(aws_sdk_ec2::types::DomainType::Vpc)
                    .tag_specifications(ec2_tags(
                        ResourceType::ElasticIp,
                        &spec.stack,
                        &name,
                        &[(EGRESS_TAG, &spec.stack)],
                    ))
                    .send()
                    .await
                    .map_err(err("AllocateAddress", &name))?;
            }
            Action::TagRouteTable { route_table } => {
                c.ec2
                    .create_tags()
                    .resources(route_table)
                    .tags(ec2_tag(EGRESS_TAG, &spec.stack))
                    .send()
                    .await
                    .map_err(err("CreateTags", route_table))?;
            }
            Action::WaitForTakeover => wait_for_takeover(c, &spec.stack, progress).await?,
        }
    }
    Ok(())
}

/// Waits until every table tagged for the stack routes 0.0.0.0/0 to an instance or
/// network interface (natd's), active.
async fn wait_for_takeover(c: &Clients, stack: &str, progress: Progress<'_>) -> Result<(), Error> {
    let n = wait::until(
        "natd to take the routes over",
        stack,
        TAKEOVER_WAIT,
        progress,
        || async {
            let tables = read::tables_tagged(c, EGRESS_TAG, stack).await?;
            let waiting: Vec<&str> = tables
                .iter()
                .filter(|t| {
                    !natd::aws::default_route(t).is_some_and(|r| {
                        (r.instance_id().is_some() || r.network_interface_id().is_some())
                            && r.state().is_some_and(|s| s.as_str() == "active")
                    })
                })
                .filter_map(|t| t.route_table_id())
                .collect();
            Ok(if waiting.is_empty() {
                Poll::Ready(tables.len())
            } else {
                Poll::Waiting(waiting.join(", "))
            })
        },
    )
    .await?;
    progress(&format!("natd holds the routes of {n} table(s)"));
    Ok(())
}

/// A route table tagged for the stack's natd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableState {
    /// `rtb-...`
    pub id: String,
    /// Its default route's target, and whether that is a blackhole.
    pub default: Option<(String, bool)>,
}

/// A NAT instance of the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceState {
    /// `i-...`
    pub id: String,
    /// Its network interfaces.
    pub enis: Vec<String>,
    /// Not terminated yet.
    pub live: bool,
}

/// What exists of the part, for its removal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    /// Tables tagged `natd:egress=STACK`.
    pub tables: Vec<TableState>,
    /// The stack's instances.
    pub instances: Vec<InstanceState>,
    /// The group, when it is the stack's.
    pub group: bool,
    /// The pair's second group, when it is the stack's.
    pub standby_group: bool,
    /// The stack's launch templates: (id, name).
    pub launch_templates: Vec<(String, String)>,
    /// The NAT security groups: (id, name).
    pub security_groups: Vec<(String, String)>,
    /// The role (with the stack's tag).
    pub role: bool,
    /// The instance profile (with the stack's tag).
    pub instance_profile: bool,
    /// The stack's Elastic IP for natd.
    pub addresses: Vec<AddressState>,
}

/// One removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Removal {
    /// Remove `natd:egress` from a table, so no natd takes its route back.
    UntagTable {
        /// The table.
        route_table: String,
    },
    /// Delete a default route to the stack's instance (or a blackhole).
    DeleteRoute {
        /// The table.
        route_table: String,
        /// Its target.
        target: String,
    },
    /// Delete the group, terminating its instances.
    DeleteGroup {
        /// The group.
        name: String,
    },
    /// Wait until the instances are terminated (they hold the security group).
    WaitTerminated {
        /// The instances.
        instances: Vec<String>,
    },
    /// Delete a launch template.
    DeleteLaunchTemplate {
        /// `lt-...`
        id: String,
        /// Its name.
        name: String,
    },
    /// Delete the NAT security group.
    DeleteSecurityGroup {
        /// `sg-...`
        id: String,
        /// Its name.
        name: String,
    },
    /// Take the role out of the instance profile and delete the profile.
    DeleteInstanceProfile {
        /// The profile.
        name: String,
    },
    /// Delete the role and its inline policy.
    DeleteRole {
        /// The role.
        name: String,
    },
    /// Release the stack's Elastic IP.
    ReleaseAddress {
        /// The address.
        address: AddressState,
    },
}

/// Reads what exists of the stack's part.
pub async fn read_existing(c: &Clients, stack: &str) -> Result<Existing, Error> {
    let name = Names(stack).nat();
    let mut e = Existing::default();
    for t in read::tables_tagged(c, EGRESS_TAG, stack).await? {
        e.tables.push(TableState {
            id: t.route_table_id().unwrap_or_default().to_string(),
            default: natd::aws::default_route(&t).and_then(|r| {
                let target = r.network_interface_id().or(r.instance_id())?;
                Some((
                    target.to_string(),
                    r.state().is_some_and(|s| s.as_str() == "blackhole"),
                ))
            }),
        });
    }
    for i in read::stack_instances(c, stack).await? {
        e.instances.push(InstanceState {
            id: i.instance_id().unwrap_or_default().to_string(),
            enis: i
                .network_interfaces()
                .iter()
                .filter_map(|n| n.network_interface_id())
                .map(str::to_string)
                .collect(),
            live: !read::terminated(&i),
        });
    }
    e.group = read::auto_scaling_group(c, &name)
        .await?
        .is_some_and(|g| read::group_of_stack(&g, stack));
    let standby = Names(stack).standby();
    e.standby_group = read::auto_scaling_group(c, &standby)
        .await?
        .is_some_and(|g| read::group_of_stack(&g, stack));
    e.launch_templates = read::launch_templates_named(c, &name)
        .await?
        .iter()
        .filter(|t| of_stack(t.tags(), stack))
        .map(|t| {
            (
                t.launch_template_id().unwrap_or_default().to_string(),
                name.clone(),
            )
        })
        .collect();
    e.security_groups = read::groups_named(c, None, &[&name])
        .await?
        .iter()
        .filter(|g| of_stack(g.tags(), stack))
        .map(|g| (g.group_id().unwrap_or_default().to_string(), name.clone()))
        .collect();
    e.role = read::role(c, &name)
        .await?
        .is_some_and(|(_, tags)| tags.get(STACK_TAG).map(String::as_str) == Some(stack));
    if e.role {
        let profile = c
            .iam
            .get_instance_profile()
            .instance_profile_name(&name)
            .send()
            .await;
        e.instance_profile = found(profile, "GetInstanceProfile", &name)?.is_some();
    }
    e.addresses = read::stack_addresses(c, stack)
        .await?
        .iter()
        .filter(|a| tag_value(a.tags(), EGRESS_TAG) == Some(stack))
        .map(AddressState::from)
        .collect();
    Ok(e)
}

/// The removals that take `e` away, in dependency order. `taken`, in a switch to
/// another egress, names the route tables that egress has taken over (and released
/// from natd): they are left as they are; every other table is untagged and its route
/// to the stack's instances deleted.
pub fn plan_remove(stack: &str, e: &Existing, taken: Option<&BTreeSet<String>>) -> Vec<Removal> {
    let name = Names(stack).nat();
    let mut out = Vec::new();
    let ours: BTreeSet<&str> = e
        .instances
        .iter()
        .flat_map(|i| std::iter::once(i.id.as_str()).chain(i.enis.iter().map(String::as_str)))
        .collect();
    let tables: Vec<&TableState> = e
        .tables
        .iter()
        .filter(|t| !taken.is_some_and(|k| k.contains(&t.id)))
        .collect();
    // Untag first, so no natd takes a route back; then drop the routes that point at
    // the stack's instances or are blackholes.
    for t in &tables {
        out.push(Removal::UntagTable {
            route_table: t.id.clone(),
        });
    }
    for t in &tables {
        if let Some((target, blackhole)) = &t.default
            && (ours.contains(target.as_str()) || *blackhole)
        {
            out.push(Removal::DeleteRoute {
                route_table: t.id.clone(),
                target: target.clone(),
            });
        }
    }
    if e.group {
        out.push(Removal::DeleteGroup { name: name.clone() });
    }
    if e.standby_group {
        out.push(Removal::DeleteGroup {
            name: Names(stack).standby(),
        });
    }
    let live: Vec<String> = e
        .instances
        .iter()
        .filter(|i| i.live)
        .map(|i| i.id.clone())
        .collect();
    if !live.is_empty() {
        out.push(Removal::WaitTerminated { instances: live });
    }
    for (id, name) in &e.launch_templates {
        out.push(Removal::DeleteLaunchTemplate {
            id: id.clone(),
            name: name.clone(),
        });
    }
    for (id, name) in &e.security_groups {
        out.push(Removal::DeleteSecurityGroup {
            id: id.clone(),
            name: name.clone(),
        });
    }
    if e.role {
        if e.instance_profile {
            out.push(Removal::DeleteInstanceProfile { name: name.clone() });
        }
        out.push(Removal::DeleteRole { name });
    }
    for a in &e.addresses {
        out.push(Removal::ReleaseAddress { address: a.clone() });
    }
    out
}

/// Carries out `removals` in order.
pub async fn remove(
    c: &Clients,
    removals: &[Removal],
    progress: Progress<'_>,
) -> Result<(), Error> {
    for r in removals {
        match r {
            Removal::UntagTable { route_table } => {
                read::untag(c, route_table, EGRESS_TAG).await?;
            }
            Removal::DeleteRoute { route_table, .. } => {
                read::delete_default_route(c, route_table).await?;
            }
            Removal::DeleteGroup { name } => {
                let r = c
                    .asg
                    .delete_auto_scaling_group()
                    .auto_scaling_group_name(name)
                    .force_delete(true)
                    .send()
                    .await;
                found(r, "DeleteAutoScalingGroup", name)?;
            }
            Removal::WaitTerminated { instances } => {
                let ids: Vec<&str> = instances.iter().map(String::as_str).collect();
                let what = instances.join(", ");
                wait::until(
                    "instances to terminate",
                    &what,
                    TERMINATE_WAIT,
                    progress,
                    || async {
                        let left: Vec<String> = read::instances(
                            c,
                            vec![crate::aws::names::filter("instance-id", &ids)],
                            &what,
                        )
                        .await?
                        .iter()
                        .filter(|i| !read::terminated(i))
                        .filter_map(|i| i.instance_id().map(str::to_string))
                        .collect();
                        Ok(if left.is_empty() {
                            Poll::Ready(())
                        } else {
                            Poll::Waiting(format!("{} running", left.join(", ")))
                        })
                    },
                )
                .await?;
            }
            Removal::DeleteLaunchTemplate { id, .. } => {
                let r = c
                    .ec2
                    .delete_launch_template()
                    .launch_template_id(id)
                    .send()
                    .await;
                found(r, "DeleteLaunchTemplate", id)?;
            }
            Removal::DeleteSecurityGroup { id, .. } => {
                // A terminated instance's network interface keeps the group for a
                // while after the instance is gone (DependencyViolation until EC2
                // deletes it).
                wait::retry_while(
                    "the security group to be free",
                    id,
                    super::lambda::GROUP_IN_USE_WAIT,
                    progress,
                    super::lambda::group_still_in_use,
                    || async {
                        let r = c.ec2.delete_security_group().group_id(id).send().await;
                        found(r, "DeleteSecurityGroup", id).map(|_| ())
                    },
                )
                .await?;
            }
            Removal::DeleteInstanceProfile { name } => {
                let r = c
                    .iam
                    .remove_role_from_instance_profile()
                    .instance_profile_name(name)
                    .role_name(name)
                    .send()
                    .await;
                found(r, "RemoveRoleFromInstanceProfile", name)?;
                let r = c
                    .iam
                    .delete_instance_profile()
                    .instance_profile_name(name)
                    .send()
                    .await;
                found(r, "DeleteInstanceProfile", name)?;
            }
            Removal::DeleteRole { name } => read::delete_role(c, name).await?,
            Removal::ReleaseAddress { address } => read::release_address(c, address).await?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            stack: "dev1".into(),
            vpc: "vpc-1".into(),
            public_subnets: vec!["subnet-pub".into()],
            private_cidrs: ["10.0.1.0/24".to_string(), "10.0.2.0/24".to_string()].into(),
            private_tables: ["rtb-a".to_string()].into(),
            ami: "ami-1".into(),
            instance_type: "t4g.micro".into(),
            eip: false,
            pair: None,
        }
    }

    fn complete(s: &Spec) -> Observed {
        Observed {
            security_group: Some(GroupRules {
                id: "sg-1".into(),
                cidrs: s.private_cidrs.clone(),
            }),
            role: true,
            role_policy: Some(natd_contract::agent_policy(&s.stack)),
            instance_profile: Some(true),
            launch_template: Some(Template {
                id: "lt-1".into(),
                image: s.ami.clone(),
                instance_type: s.instance_type.clone(),
                groups: ["sg-1".to_string()].into(),
            }),
            group: Some(Group {
                desired: 1,
                min_max: (1, 1),
                subnets: ["subnet-pub".to_string()].into(),
                launches_first: true,
            }),
            hook: Some(HOOK_TIMEOUT_SECS),
            standby: None,
            address_count: 0,
            pair_rule: false,
            table_tags: [(
                "rtb-a".to_string(),
                TableTags {
                    egress: Some(s.stack.clone()),
                    routes: None,
                },
            )]
            .into(),
            address: None,
            foreign: vec![],
        }
    }

    #[test]
    fn fresh_vpc_gets_everything_in_dependency_order() {
        let s = spec();
        let mut o = Observed::default();
        o.table_tags.insert("rtb-a".into(), TableTags::default());
        let p = plan(&s, &o).expect("plan");
        let pos = |a: &Action| p.iter().position(|x| x == a).expect("present");
        assert!(pos(&Action::CreateSecurityGroup) < pos(&Action::CreateLaunchTemplate));
        assert!(pos(&Action::CreateInstanceProfile) < pos(&Action::CreateLaunchTemplate));
        assert!(pos(&Action::CreateGroup) < pos(&Action::PutLifecycleHook));
        assert!(
            pos(&Action::PutLifecycleHook) < pos(&Action::ScaleToOne),
            "hook before the first launch"
        );
        assert!(p.contains(&Action::TagRouteTable {
            route_table: "rtb-a".into()
        }));
        assert!(p.contains(&Action::AuthorizeIngress {
            cidrs: vec!["10.0.1.0/24".into(), "10.0.2.0/24".into()]
        }));
    }

    fn pair_spec(egress_ips: Option<u32>) -> Spec {
        Spec {
            pair: Some(Pair {
                subnet_a: "subnet-pub".into(),
                subnet_b: "subnet-pub".into(),
                spread: false,
                egress_ips,
                addresses_per_interface: None,
            }),
            ..spec()
        }
    }

    fn complete_pair(s: &Spec, addresses: usize) -> Observed {
        let mut o = complete(s);
        o.standby = Some((
            Group {
                desired: 1,
                min_max: (1, 1),
                subnets: ["subnet-pub".to_string()].into(),
                launches_first: true,
            },
            Some(HOOK_TIMEOUT_SECS),
        ));
        o.pair_rule = true;
        o.address_count = addresses;
        o.address = Some("eipalloc-1".into());
        o
    }

    #[test]
    fn a_pair_is_two_groups_of_one_the_pair_rule_and_its_addresses() {
        let s = pair_spec(Some(3));
        let p = plan(&s, &Observed::default()).expect("plan");
        let pos = |a: &Action| p.iter().position(|x| x == a).expect("planned");
        assert!(pos(&Action::CreateSecurityGroup) < pos(&Action::AuthorizePair));
        assert!(
            pos(&Action::CreateStandbyGroup {
                subnets: vec!["subnet-pub".into()]
            }) < pos(&Action::PutStandbyLifecycleHook)
        );
        assert!(pos(&Action::PutStandbyLifecycleHook) < pos(&Action::ScaleStandbyToOne));
        assert_eq!(
            p.iter().filter(|a| **a == Action::AllocateAddress).count(),
            3
        );
        // Re-running converges; without --egress-ips the pair keeps what it has.
        assert_eq!(plan(&s, &complete_pair(&s, 3)).expect("plan"), vec![]);
        assert_eq!(
            plan(&pair_spec(None), &complete_pair(&s, 3)).expect("plan"),
            vec![]
        );
        assert_eq!(
            plan(&pair_spec(Some(4)), &complete_pair(&s, 3)).expect("plan"),
            vec![Action::AllocateAddress]
        );
    }

    #[test]
    fn a_pair_is_never_shrunk_nor_switched_to_or_from_one_instance_by_setup() {
        let s = pair_spec(Some(1));
        assert!(matches!(
            plan(&s, &complete_pair(&s, 2)),
            Err(Refusal::FewerEgressIps { have: 2, asked: 1 })
        ));
        assert!(matches!(
            plan(&spec(), &complete_pair(&s, 1)),
            Err(Refusal::PairToSingle)
        ));
        assert!(matches!(
            plan(&s, &complete(&spec())),
            Err(Refusal::SingleToPair)
        ));
    }

    #[test]
    fn a_pairs_user_data_turns_natd_pair_mode_on() {
        let decoded = |s: &Spec| {
            String::from_utf8(aws_smithy_types::base64::decode(user_data(s)).expect("base64"))
                .expect("utf-8")
        };
        let pair = decoded(&pair_spec(Some(2)));
        assert!(
            pair.contains("      pair = true\n      egress_ips = 2\n"),
            "{pair}"
        );
        assert!(!decoded(&spec()).contains("pair"));
        assert!(!decoded(&spec()).contains("require_eip"));
        let with_eip = Spec {
            eip: true,
            ..spec()
        };
        assert!(decoded(&with_eip).contains("      require_eip = true\n"));
        assert!(!decoded(&pair_spec(Some(2))).contains("require_eip"));
    }

    #[test]
    fn complete_stack_needs_nothing_and_drift_is_targeted() {
        let s = spec();
        assert_eq!(plan(&s, &complete(&s)).expect("plan"), vec![]);
        let mut o = complete(&s);
        o.role_policy = Some(serde_json::json!({"Statement": []}));
        o.launch_template.as_mut().expect("lt").image = "ami-old".into();
        o.security_group.as_mut().expect("sg").cidrs = ["10.0.1.0/24".to_string()].into();
        assert_eq!(
            plan(&s, &o).expect("plan"),
            vec![
                Action::AuthorizeIngress {
                    cidrs: vec!["10.0.2.0/24".into()]
                },
                Action::PutRolePolicy,
                Action::UpdateLaunchTemplate
            ]
        );
    }

    #[test]
    fn drift_that_used_to_stay_is_repaired() {
        let s = spec();
        let mut o = complete(&s);
        // A CIDR that is no longer a private subnet of the stack.
        o.security_group
            .as_mut()
            .expect("sg")
            .cidrs
            .insert("10.0.9.0/24".into());
        // The group moved to another subnet, the hook's timeout changed, the template
        // uses another security group.
        o.group.as_mut().expect("group").subnets = ["subnet-other".to_string()].into();
        o.hook = Some(60);
        o.launch_template.as_mut().expect("lt").groups = ["sg-other".to_string()].into();
        assert_eq!(
            plan(&s, &o).expect("plan"),
            vec![
                Action::RevokeIngress {
                    cidrs: vec!["10.0.9.0/24".into()]
                },
                Action::UpdateLaunchTemplate,
                Action::UpdateGroupSubnets {
                    subnets: vec!["subnet-pub".into()]
                },
                Action::PutLifecycleHook,
            ]
        );
    }

    #[test]
    fn another_stacks_table_and_a_foreign_namesake_are_refused() {
        let s = spec();
        for (tags, tag) in [
            (
                TableTags {
                    egress: Some("prod".into()),
                    routes: None,
                },
                EGRESS_TAG,
            ),
            (
                TableTags {
                    egress: None,
                    routes: Some("prod".into()),
                },
                ROUTES_TAG,
            ),
        ] {
            let mut o = complete(&s);
            o.table_tags.insert("rtb-a".into(), tags);
            assert_eq!(
                plan(&s, &o).expect_err("refused"),
                Refusal::TableOfOtherStack {
                    table: "rtb-a".into(),
                    tag,
                    other: "prod".into()
                }
            );
        }
        let mut o = Observed::default();
        o.foreign.push(("IAM role", "natd-dev1".into()));
        let e = plan(&s, &o).expect_err("foreign role");
        assert!(e.to_string().contains("IAM role natd-dev1"), "{e}");
    }

    #[test]
    fn removal_goes_in_dependency_order_and_leaves_taken_tables_on_handover() {
        let e = Existing {
            tables: vec![
                TableState {
                    id: "rtb-a".into(),
                    default: Some(("eni-1".into(), false)),
                },
                TableState {
                    id: "rtb-b".into(),
                    default: Some(("eni-foreign".into(), false)),
                },
            ],
            instances: vec![InstanceState {
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
        };
        let r = plan_remove("s", &e, None);
        let pos = |x: &Removal| r.iter().position(|y| y == x).expect("present");
        assert!(
            pos(&Removal::UntagTable {
                route_table: "rtb-a".into()
            }) < pos(&Removal::DeleteRoute {
                route_table: "rtb-a".into(),
                target: "eni-1".into()
            })
        );
        assert!(
            !r.iter().any(
                |x| matches!(x, Removal::DeleteRoute { route_table, .. } if route_table == "rtb-b")
            ),
            "a route to someone else's target stays"
        );
        assert!(
            pos(&Removal::WaitTerminated {
                instances: vec!["i-1".into()]
            }) < pos(&Removal::DeleteSecurityGroup {
                id: "sg-1".into(),
                name: "natd-s".into()
            })
        );
        assert!(
            pos(&Removal::DeleteInstanceProfile {
                name: "natd-s".into()
            }) < pos(&Removal::DeleteRole {
                name: "natd-s".into()
            })
        );
        let taken = BTreeSet::from(["rtb-a".to_string()]);
        let h = plan_remove("s", &e, Some(&taken));
        assert!(
            !h.iter().any(|x| matches!(
                x,
                Removal::UntagTable { route_table } | Removal::DeleteRoute { route_table, .. }
                    if route_table == "rtb-a"
            )),
            "a table the new egress took is left to it"
        );
        assert!(
            h.contains(&Removal::UntagTable {
                route_table: "rtb-b".into()
            }),
            "a table it did not take is released"
        );
        assert_eq!(plan_remove("s", &Existing::default(), None), vec![]);
    }
}
