//! `natctl setup --env dev`: one self-healing NAT instance (natd) in an Auto Scaling
//! group. [`plan`] decides from what exists (pure); [`read`] and [`apply`] are the thin
//! EC2/IAM/Auto Scaling adapters. Every resource carries `natd:stack=<stack>`; natctl
//! refuses to change what carries another stack's tag.

use natd::cloud::ApiError;
use natd::contract::{EGRESS_TAG, LAUNCHING_TRANSITION, STACK_TAG};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Name of the lifecycle hook natd completes.
pub const HOOK: &str = "natd-ready";
/// How long a launch may wait for natd before the group abandons it: natd's start-up
/// retries take about 2 minutes, plus boot.
const HOOK_TIMEOUT_SECS: i32 = 600;

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
    /// When switching from prod: how long the gateways stay after natd holds the
    /// routes, so connections through them finish and route changes propagate.
    pub drain_secs: u64,
}

impl Spec {
    /// Name of every named resource of the stack.
    pub fn name(&self) -> String {
        format!("natd-{}", self.stack)
    }
}

/// What exists now, as read by [`read`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The NAT security group and the CIDRs it admits.
    pub security_group: Option<(String, BTreeSet<String>)>,
    /// The role exists.
    pub role: bool,
    /// The role's inline policy document, as JSON.
    pub role_policy: Option<serde_json::Value>,
    /// The instance profile exists and carries the role.
    pub instance_profile: Option<bool>,
    /// The launch template: (id, image, instance type) of its default version.
    pub launch_template: Option<(String, String, String)>,
    /// The group: (desired capacity, subnets).
    pub group: Option<(i32, BTreeSet<String>)>,
    /// The group has natd's launch hook.
    pub hook: bool,
    /// `natd:egress` tag value of each private route table (None: untagged).
    pub table_tags: BTreeMap<String, Option<String>>,
    /// The stack's Elastic IP for natd (`natd:egress=<stack>`).
    pub address: Option<String>,
    /// The stack's prod egress that is still there (switching from prod).
    pub prod_left: Vec<String>,
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
    /// Create the instance role (trust: EC2).
    CreateRole,
    /// Put natd's policy on the role.
    PutRolePolicy,
    /// Create the instance profile with the role.
    CreateInstanceProfile,
    /// Create the launch template.
    CreateLaunchTemplate,
    /// New default version of the launch template (image or type changed).
    UpdateLaunchTemplate,
    /// Create the group (capacity 0, so the hook exists before the first launch).
    CreateGroup,
    /// Add natd's launch lifecycle hook.
    PutLifecycleHook,
    /// Set min = max = desired = 1.
    ScaleToOne,
    /// Allocate the Elastic IP natd holds (`natd:egress=<stack>`).
    AllocateAddress,
    /// Tag a private route table `natd:egress=<stack>`.
    TagRouteTable {
        /// The table.
        route_table: String,
    },
    /// Wait until natd holds the default route of every tagged table.
    WaitForTakeover,
    /// Remove the stack's prod egress (NAT gateways, their addresses).
    RemoveProdEgress {
        /// What is left of it.
        parts: Vec<String>,
    },
}

/// Why setup refuses to go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A private route table already belongs to another stack.
    #[error(
        "route table {table} is tagged {EGRESS_TAG}={other}; remove that stack first or leave this subnet out"
    )]
    TableOfOtherStack {
        /// The table.
        table: String,
        /// The other stack.
        other: String,
    },
}

/// The changes that turn `o` into `spec`, in dependency order.
pub fn plan(spec: &Spec, o: &Observed) -> Result<Vec<Action>, Refusal> {
    for (table, tag) in &o.table_tags {
        if let Some(other) = tag.as_ref().filter(|t| **t != spec.stack) {
            return Err(Refusal::TableOfOtherStack {
                table: table.clone(),
                other: other.clone(),
            });
        }
    }
    let mut out = Vec::new();
    let admitted = match &o.security_group {
        None => {
            out.push(Action::CreateSecurityGroup);
            BTreeSet::new()
        }
        Some((_, cidrs)) => cidrs.clone(),
    };
    let missing: Vec<String> = spec.private_cidrs.difference(&admitted).cloned().collect();
    if !missing.is_empty() {
        out.push(Action::AuthorizeIngress { cidrs: missing });
    }
    if !o.role {
        out.push(Action::CreateRole);
    }
    if o.role_policy.as_ref() != Some(&natd::contract::agent_policy(&spec.stack)) {
        out.push(Action::PutRolePolicy);
    }
    if o.instance_profile != Some(true) {
        out.push(Action::CreateInstanceProfile);
    }
    match &o.launch_template {
        None => out.push(Action::CreateLaunchTemplate),
        Some((_, image, kind)) if *image != spec.ami || *kind != spec.instance_type => {
            out.push(Action::UpdateLaunchTemplate)
        }
        Some(_) => {}
    }
    if o.group.is_none() {
        out.push(Action::CreateGroup);
    }
    if !o.hook {
        out.push(Action::PutLifecycleHook);
    }
    if spec.eip && o.address.is_none() {
        out.push(Action::AllocateAddress);
    }
    if o.group.as_ref().is_none_or(|(desired, _)| *desired != 1) {
        out.push(Action::ScaleToOne);
    }
    for t in &spec.private_tables {
        if o.table_tags.get(t).cloned().flatten().is_none() {
            out.push(Action::TagRouteTable {
                route_table: t.clone(),
            });
        }
    }
    if !o.prod_left.is_empty() {
        // Switching from prod: the gateways go only once natd routes every table.
        out.push(Action::WaitForTakeover);
        out.push(Action::RemoveProdEgress {
            parts: o.prod_left.clone(),
        });
    }
    Ok(out)
}

/// Errors talking to AWS, named after the call.
#[derive(Debug, thiserror::Error)]
#[error("{op} {target}: {source}")]
pub struct Error {
    /// The call.
    pub op: &'static str,
    /// The resource.
    pub target: String,
    /// The service error.
    pub source: ApiError,
}

/// Maps an SDK error to [`Error`] for `op` on `target`.
pub(crate) fn err<E: Into<ApiError>>(op: &'static str, target: &str) -> impl FnOnce(E) -> Error {
    let target = target.to_string();
    move |e| Error {
        op,
        target,
        source: e.into(),
    }
}

/// AWS clients setup uses.
#[derive(Debug, Clone)]
pub struct Clients {
    /// EC2.
    pub ec2: aws_sdk_ec2::Client,
    /// IAM.
    pub iam: aws_sdk_iam::Client,
    /// Auto Scaling.
    pub asg: aws_sdk_autoscaling::Client,
    /// Lambda.
    pub lambda: aws_sdk_lambda::Client,
    /// Secrets Manager.
    pub secrets: aws_sdk_secretsmanager::Client,
    /// RDS.
    pub rds: aws_sdk_rds::Client,
}

impl Clients {
    /// Clients from one SDK configuration.
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self {
            ec2: aws_sdk_ec2::Client::new(sdk),
            iam: aws_sdk_iam::Client::new(sdk),
            asg: aws_sdk_autoscaling::Client::new(sdk),
            lambda: aws_sdk_lambda::Client::new(sdk),
            secrets: aws_sdk_secretsmanager::Client::new(sdk),
            rds: aws_sdk_rds::Client::new(sdk),
        }
    }
}

fn ec2_tags(
    kind: aws_sdk_ec2::types::ResourceType,
    spec: &Spec,
) -> aws_sdk_ec2::types::TagSpecification {
    use aws_sdk_ec2::types::{Tag, TagSpecification};
    TagSpecification::builder()
        .resource_type(kind)
        .tags(Tag::builder().key(STACK_TAG).value(&spec.stack).build())
        .tags(Tag::builder().key("Name").value(spec.name()).build())
        .build()
}

/// An IAM tag for the call `op` on `target`.
pub(crate) fn iam_tag(
    op: &'static str,
    target: &str,
    key: &str,
    value: &str,
) -> Result<aws_sdk_iam::types::Tag, Error> {
    aws_sdk_iam::types::Tag::builder()
        .key(key)
        .value(value)
        .build()
        .map_err(|e| Error {
            op,
            target: target.to_string(),
            source: ApiError {
                code: None,
                message: e.to_string(),
            },
        })
}

/// The value of EC2 tag `key`, if set.
pub(crate) fn tag_value<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// The call's result, or `None` when the resource it names does not exist.
pub(crate) fn found<T, E: Into<ApiError>>(
    r: Result<T, E>,
    op: &'static str,
    target: &str,
) -> Result<Option<T>, Error> {
    match r.map_err(Into::into) {
        Ok(v) => Ok(Some(v)),
        Err(e)
            if e.code
                .as_deref()
                .is_some_and(|c| c.contains("NotFound") || c == "NoSuchEntity") =>
        {
            Ok(None)
        }
        Err(source) => Err(Error {
            op,
            target: target.to_string(),
            source,
        }),
    }
}

/// The route tables tagged `natd:egress=<stack>`, in any VPC of the region.
pub(crate) async fn egress_tables(
    c: &Clients,
    stack: &str,
) -> Result<Vec<aws_sdk_ec2::types::RouteTable>, Error> {
    let tag = aws_sdk_ec2::types::Filter::builder()
        .name(format!("tag:{EGRESS_TAG}"))
        .values(stack)
        .build();
    let r = c
        .ec2
        .describe_route_tables()
        .filters(tag)
        .send()
        .await
        .map_err(err("DescribeRouteTables", stack))?;
    Ok(r.route_tables().to_vec())
}

/// Reads what exists of the stack.
pub async fn read(c: &Clients, spec: &Spec) -> Result<Observed, Error> {
    use aws_sdk_ec2::types::Filter;
    let name = spec.name();
    let mut o = Observed::default();
    let sgs = c
        .ec2
        .describe_security_groups()
        .filters(Filter::builder().name("vpc-id").values(&spec.vpc).build())
        .filters(Filter::builder().name("group-name").values(&name).build())
        .filters(
            Filter::builder()
                .name(format!("tag:{STACK_TAG}"))
                .values(&spec.stack)
                .build(),
        )
        .send()
        .await
        .map_err(err("DescribeSecurityGroups", &name))?;
    if let Some(g) = sgs.security_groups().first() {
        let cidrs = g
            .ip_permissions()
            .iter()
            .flat_map(|p| p.ip_ranges())
            .filter_map(|r| r.cidr_ip().map(str::to_string))
            .collect();
        o.security_group = Some((g.group_id().unwrap_or_default().to_string(), cidrs));
    }
    o.role = found(
        c.iam.get_role().role_name(&name).send().await,
        "GetRole",
        &name,
    )?
    .is_some();
    if o.role {
        let policy = c
            .iam
            .get_role_policy()
            .role_name(&name)
            .policy_name(&name)
            .send()
            .await;
        if let Some(p) = found(policy, "GetRolePolicy", &name)? {
            // IAM returns the document URL-encoded.
            o.role_policy = serde_json::from_str(&urlencoding_decode(p.policy_document())).ok();
        }
    }
    let profile = c
        .iam
        .get_instance_profile()
        .instance_profile_name(&name)
        .send()
        .await;
    o.instance_profile = found(profile, "GetInstanceProfile", &name)?.map(|p| {
        p.instance_profile()
            .is_some_and(|ip| ip.roles().iter().any(|r| r.role_name() == name))
    });
    let lts = c
        .ec2
        .describe_launch_templates()
        .filters(
            Filter::builder()
                .name("launch-template-name")
                .values(&name)
                .build(),
        )
        // Only a template carrying the stack's tag is ours (teardown removes only those).
        .filters(
            Filter::builder()
                .name(format!("tag:{STACK_TAG}"))
                .values(&spec.stack)
                .build(),
        )
        .send()
        .await
        .map_err(err("DescribeLaunchTemplates", &name))?;
    if let Some(lt) = lts.launch_templates().first() {
        let id = lt.launch_template_id().unwrap_or_default().to_string();
        let v = c
            .ec2
            .describe_launch_template_versions()
            .launch_template_id(&id)
            .versions("$Default")
            .send()
            .await
            .map_err(err("DescribeLaunchTemplateVersions", &id))?;
        let data = v
            .launch_template_versions()
            .first()
            .and_then(|v| v.launch_template_data());
        let image = data
            .and_then(|d| d.image_id())
            .unwrap_or_default()
            .to_string();
        let kind = data
            .and_then(|d| d.instance_type())
            .map(|t| t.as_str().to_string())
            .unwrap_or_default();
        o.launch_template = Some((id, image, kind));
    }
    let groups = c
        .asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(&name)
        .send()
        .await
        .map_err(err("DescribeAutoScalingGroups", &name))?;
    if let Some(g) = groups.auto_scaling_groups().first() {
        let subnets = g
            .vpc_zone_identifier()
            .unwrap_or_default()
            .split(',')
            .map(str::to_string)
            .collect();
        o.group = Some((g.desired_capacity().unwrap_or(0), subnets));
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
            .any(|h| h.lifecycle_hook_name() == Some(HOOK));
    }
    let addresses = c
        .ec2
        .describe_addresses()
        .filters(
            Filter::builder()
                .name(format!("tag:{EGRESS_TAG}"))
                .values(&spec.stack)
                .build(),
        )
        .send()
        .await
        .map_err(err("DescribeAddresses", &name))?;
    o.address = addresses
        .addresses()
        .iter()
        .find(|a| {
            a.tags()
                .iter()
                .any(|t| t.key() == Some(EGRESS_TAG) && t.value() == Some(spec.stack.as_str()))
        })
        .and_then(|a| a.allocation_id())
        .map(str::to_string);
    o.prod_left = crate::teardown::prod_parts(c, &spec.stack).await?;
    if !spec.private_tables.is_empty() {
        let tables = c
            .ec2
            .describe_route_tables()
            .set_route_table_ids(Some(spec.private_tables.iter().cloned().collect()))
            .send()
            .await
            .map_err(err("DescribeRouteTables", &spec.vpc))?;
        for t in tables.route_tables() {
            let tag = t
                .tags()
                .iter()
                .find(|t| t.key() == Some(EGRESS_TAG))
                .and_then(|t| t.value());
            o.table_tags.insert(
                t.route_table_id().unwrap_or_default().to_string(),
                tag.map(str::to_string),
            );
        }
    }
    Ok(o)
}

/// Decodes IAM's percent-encoded policy documents.
pub(crate) fn urlencoding_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The cloud-config that tells natd its stack (written before network-online, so
/// before natd.service starts).
fn user_data(stack: &str) -> String {
    let config = format!("stack = \"{stack}\"\n");
    let cloud_config = format!(
        "#cloud-config\nwrite_files:\n  - path: /etc/natd/natd.toml\n    permissions: '0644'\n    content: |\n      {}\n",
        config.trim_end()
    );
    aws_smithy_types::base64::encode(cloud_config)
}

/// How long a switch from prod waits for natd to take the routes over.
const TAKEOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(900);

/// Waits until every table tagged for the stack routes 0.0.0.0/0 to an instance or
/// network interface (natd's), active.
async fn wait_for_takeover(
    c: &Clients,
    stack: &str,
    progress: &mut impl FnMut(&str),
) -> Result<(), Error> {
    let start = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let tables = egress_tables(c, stack).await?;
        let waiting: Vec<String> = tables
            .iter()
            .filter(|t| {
                !natd::aws::default_route(t).is_some_and(|r| {
                    (r.instance_id().is_some() || r.network_interface_id().is_some())
                        && r.state().is_some_and(|s| s.as_str() == "active")
                })
            })
            .map(|t| t.route_table_id().unwrap_or_default().to_string())
            .collect();
        if waiting.is_empty() {
            progress(&format!(
                "natd holds the routes of {} table(s) after {} s",
                tables.len(),
                start.elapsed().as_secs()
            ));
            return Ok(());
        }
        let line = waiting.join(", ");
        if line != last {
            progress(&format!(
                "waiting for natd to take over {line} ({} s)",
                start.elapsed().as_secs()
            ));
            last = line;
        }
        if start.elapsed() > TAKEOVER_WAIT {
            return Err(Error {
                op: "wait for natd",
                target: last,
                source: ApiError {
                    code: None,
                    message: format!(
                        "natd has not taken these routes over after {TAKEOVER_WAIT:?}; the NAT gateways stay until it has (see natctl status)"
                    ),
                },
            });
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// Carries out `actions` in order.
pub async fn apply(
    c: &Clients,
    spec: &Spec,
    o: &Observed,
    actions: &[Action],
    progress: &mut impl FnMut(&str),
) -> Result<(), Error> {
    use aws_sdk_ec2::types::{
        IpPermission, IpRange, LaunchTemplateHttpTokensState,
        LaunchTemplateIamInstanceProfileSpecificationRequest,
        LaunchTemplateInstanceMetadataOptionsRequest,
        LaunchTemplateInstanceNetworkInterfaceSpecificationRequest, RequestLaunchTemplateData,
        ResourceType, Tag,
    };
    let name = spec.name();
    let mut sg_id = o.security_group.as_ref().map(|(id, _)| id.clone());
    let mut lt_id = o.launch_template.as_ref().map(|(id, ..)| id.clone());
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
            .user_data(user_data(&spec.stack))
            .build()
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
                    .tag_specifications(ec2_tags(ResourceType::SecurityGroup, spec))
                    .send()
                    .await
                    .map_err(err("CreateSecurityGroup", &name))?;
                sg_id = r.group_id().map(str::to_string);
            }
            Action::AuthorizeIngress { cidrs } => {
                let sg = sg_id.clone().unwrap_or_default();
                let mut perm = IpPermission::builder().ip_protocol("-1");
                for cidr in cidrs {
                    perm = perm.ip_ranges(
                        IpRange::builder()
                            .cidr_ip(cidr)
                            .description("private subnet")
                            .build(),
                    );
                }
                c.ec2
                    .authorize_security_group_ingress()
                    .group_id(&sg)
                    .ip_permissions(perm.build())
                    .send()
                    .await
                    .map_err(err("AuthorizeSecurityGroupIngress", &sg))?;
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
                    .tags(iam_tag("CreateRole", &name, STACK_TAG, &spec.stack)?)
                    .send()
                    .await
                    .map_err(err("CreateRole", &name))?;
            }
            Action::PutRolePolicy => {
                c.iam
                    .put_role_policy()
                    .role_name(&name)
                    .policy_name(&name)
                    .policy_document(natd::contract::agent_policy(&spec.stack).to_string())
                    .send()
                    .await
                    .map_err(err("PutRolePolicy", &name))?;
            }
            Action::CreateInstanceProfile => {
                if o.instance_profile.is_none() {
                    c.iam
                        .create_instance_profile()
                        .instance_profile_name(&name)
                        .tags(iam_tag(
                            "CreateInstanceProfile",
                            &name,
                            STACK_TAG,
                            &spec.stack,
                        )?)
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
                    .tag_specifications(ec2_tags(ResourceType::LaunchTemplate, spec))
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
                let lt = aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                    .launch_template_id(lt_id.clone().unwrap_or_default())
                    .version("$Default")
                    .build();
                c.asg
                    .create_auto_scaling_group()
                    .auto_scaling_group_name(&name)
                    .launch_template(lt)
                    .min_size(0)
                    .max_size(1)
                    .desired_capacity(0)
                    .vpc_zone_identifier(spec.public_subnets.join(","))
                    .tags(
                        aws_sdk_autoscaling::types::Tag::builder()
                            .key(STACK_TAG)
                            .value(&spec.stack)
                            .propagate_at_launch(true)
                            .resource_id(&name)
                            .resource_type("auto-scaling-group")
                            .build(),
                    )
                    .tags(
                        aws_sdk_autoscaling::types::Tag::builder()
                            .key("Name")
                            .value(&name)
                            .propagate_at_launch(true)
                            .resource_id(&name)
                            .resource_type("auto-scaling-group")
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(err("CreateAutoScalingGroup", &name))?;
            }
            Action::PutLifecycleHook => {
                c.asg
                    .put_lifecycle_hook()
                    .auto_scaling_group_name(&name)
                    .lifecycle_hook_name(HOOK)
                    .lifecycle_transition(LAUNCHING_TRANSITION)
                    .heartbeat_timeout(HOOK_TIMEOUT_SECS)
                    .default_result("ABANDON")
                    .send()
                    .await
                    .map_err(err("PutLifecycleHook", &name))?;
            }
            Action::ScaleToOne => {
                c.asg
                    .update_auto_scaling_group()
                    .auto_scaling_group_name(&name)
                    .min_size(1)
                    .max_size(1)
                    .desired_capacity(1)
                    .send()
                    .await
                    .map_err(err("UpdateAutoScalingGroup", &name))?;
            }
            Action::AllocateAddress => {
                c.ec2
                    .allocate_address()
                    .domain(aws_sdk_ec2::types::DomainType::Vpc)
                    .tag_specifications(
                        aws_sdk_ec2::types::TagSpecification::builder()
                            .resource_type(ResourceType::ElasticIp)
                            .tags(Tag::builder().key(STACK_TAG).value(&spec.stack).build())
                            .tags(Tag::builder().key(EGRESS_TAG).value(&spec.stack).build())
                            .tags(Tag::builder().key("Name").value(&name).build())
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(err("AllocateAddress", &name))?;
            }
            Action::WaitForTakeover => wait_for_takeover(c, &spec.stack, progress).await?,
            Action::RemoveProdEgress { .. } => {
                crate::prod::drain(spec.drain_secs, progress).await;
                let removed = crate::teardown::remove_prod(c, &spec.stack, true, progress).await?;
                for r in removed {
                    progress(&format!("removed {} {}", r.kind, r.id));
                }
            }
            Action::TagRouteTable { route_table } => {
                c.ec2
                    .create_tags()
                    .resources(route_table)
                    .tags(Tag::builder().key(EGRESS_TAG).value(&spec.stack).build())
                    .send()
                    .await
                    .map_err(err("CreateTags", route_table))?;
            }
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
            drain_secs: 0,
        }
    }

    fn complete(s: &Spec) -> Observed {
        Observed {
            security_group: Some(("sg-1".into(), s.private_cidrs.clone())),
            role: true,
            role_policy: Some(natd::contract::agent_policy(&s.stack)),
            instance_profile: Some(true),
            launch_template: Some(("lt-1".into(), s.ami.clone(), s.instance_type.clone())),
            group: Some((1, ["subnet-pub".to_string()].into())),
            hook: true,
            table_tags: [("rtb-a".to_string(), Some(s.stack.clone()))].into(),
            address: None,
            prod_left: vec![],
        }
    }

    #[test]
    fn fresh_vpc_gets_everything_in_dependency_order() {
        let s = spec();
        let mut o = Observed::default();
        o.table_tags.insert("rtb-a".into(), None);
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

    #[test]
    fn complete_stack_needs_nothing_and_drift_is_targeted() {
        let s = spec();
        assert_eq!(plan(&s, &complete(&s)).expect("plan"), vec![]);
        let mut o = complete(&s);
        o.role_policy = Some(serde_json::json!({"Statement": []}));
        o.launch_template = Some(("lt-1".into(), "ami-old".into(), s.instance_type.clone()));
        o.security_group = Some(("sg-1".into(), ["10.0.1.0/24".to_string()].into()));
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
    fn another_stacks_table_is_refused() {
        let s = spec();
        let mut o = complete(&s);
        o.table_tags.insert("rtb-a".into(), Some("prod".into()));
        assert_eq!(
            plan(&s, &o).expect_err("refused"),
            Refusal::TableOfOtherStack {
                table: "rtb-a".into(),
                other: "prod".into()
            }
        );
    }

    #[test]
    fn policy_documents_are_decoded() {
        assert_eq!(urlencoding_decode("%7B%22a%22%3A1%7D"), "{\"a\":1}");
        assert_eq!(urlencoding_decode("{\"a\":1}"), "{\"a\":1}");
    }
}
