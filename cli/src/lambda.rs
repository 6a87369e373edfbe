//! The wiring that lets a VPC Lambda function reach its database and its Secrets
//! Manager secret (and, through the stack's NAT, the internet):
//! - LambdaSG on the function;
//! - DatabaseSG admitting only the database port from LambdaSG, attached to the DB
//!   instance when one is named;
//! - SecretsManagerSG admitting HTTPS from LambdaSG, on an interface endpoint for
//!   Secrets Manager with private DNS, one subnet per AZ of the function's subnets;
//! - an execution role allowed exactly: GetSecretValue on that one secret, the
//!   network-interface calls a VPC function needs, and writing its own log group;
//! - the function's role and VPC configuration (its private subnets, LambdaSG).
//!
//! The function's previous role and VPC configuration are kept in its tags
//! (`natd:previous-role`, `natd:previous-vpc`) so teardown can put them back.
//! [`plan`] is pure; [`read`], [`apply`] and [`remove`] talk to AWS.

use crate::dev::{Clients, Error, err, found};
use natd::cloud::ApiError;
use natd::contract::STACK_TAG;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Function tag: the role it had before the stack.
pub const PREVIOUS_ROLE_TAG: &str = "natd:previous-role";
/// Function tag: its VPC configuration before the stack, `subnets|groups` or `none`.
pub const PREVIOUS_VPC_TAG: &str = "natd:previous-vpc";
/// Role tag: the function the execution role was made for.
pub const FUNCTION_TAG: &str = "natd:function";
/// EC2 calls a VPC function's execution role needs for its network interfaces. AWS
/// does not scope them to resources (its AWSLambdaVPCAccessExecutionRole grants them
/// on `*`), so these are the only actions `doctor` accepts on `*`.
pub const ENI_ACTIONS: [&str; 5] = [
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
];

/// The three security groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// On the function.
    Lambda,
    /// On the database.
    Database,
    /// On the Secrets Manager endpoint.
    SecretsManager,
}

impl Group {
    /// Its name for stack `stack`.
    pub fn name(self, stack: &str) -> String {
        match self {
            Group::Lambda => format!("natd-{stack}-lambda"),
            Group::Database => format!("natd-{stack}-database"),
            Group::SecretsManager => format!("natd-{stack}-secretsmanager"),
        }
    }
}

/// What the user asked for, with names resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spec {
    /// Stack name.
    pub stack: String,
    /// The VPC.
    pub vpc: String,
    /// Region (for the endpoint's service name and ARNs).
    pub region: String,
    /// The function's name.
    pub function: String,
    /// The function's ARN.
    pub function_arn: String,
    /// The secret's ARN, when one is named.
    pub secret_arn: Option<String>,
    /// The DB instance, when one is named.
    pub db_instance: Option<String>,
    /// The database port, when a DB instance or port is named.
    pub db_port: Option<u16>,
    /// The function's subnets (the VPC's private subnets).
    pub subnets: BTreeSet<String>,
    /// One of them per AZ, for the endpoint.
    pub endpoint_subnets: BTreeSet<String>,
}

impl Spec {
    /// The execution role's name.
    pub fn role(&self) -> String {
        format!("natd-{}-lambda", self.stack)
    }

    /// The endpoint's service name.
    pub fn service(&self) -> String {
        format!("com.amazonaws.{}.secretsmanager", self.region)
    }
}

/// The execution role's policy: the secret, the network interfaces, its log group.
pub fn role_policy(spec: &Spec) -> serde_json::Value {
    let account = spec.function_arn.split(':').nth(4).unwrap_or_default();
    let group = format!(
        "arn:aws:logs:{}:{account}:log-group:/aws/lambda/{}",
        spec.region, spec.function
    );
    let mut statements = vec![
        serde_json::json!({
            "Sid": "NetworkInterfaces",
            "Effect": "Allow",
            "Action": ENI_ACTIONS,
            "Resource": "*"
        }),
        serde_json::json!({
            "Sid": "OwnLogGroup",
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [group.clone(), format!("{group}:*")]
        }),
    ];
    if let Some(secret) = &spec.secret_arn {
        statements.push(serde_json::json!({
            "Sid": "OneSecret",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": secret
        }));
    }
    serde_json::json!({"Version": "2012-10-17", "Statement": statements})
}

/// A security group as read: its id and ingress rules (protocol, port, source group).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SgObs {
    /// `sg-...`
    pub id: String,
    /// (protocol, from port, source group id).
    pub ingress: BTreeSet<(String, i32, String)>,
}

/// The function as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionObs {
    /// Its role ARN.
    pub role: String,
    /// Its subnets.
    pub subnets: BTreeSet<String>,
    /// Its security groups.
    pub groups: BTreeSet<String>,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
}

/// What exists now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The stack's security groups.
    pub groups: BTreeMap<Group, SgObs>,
    /// The endpoint: (id, private DNS, subnets, groups).
    pub endpoint: Option<(String, bool, BTreeSet<String>, BTreeSet<String>)>,
    /// The execution role's ARN.
    pub role: Option<String>,
    /// Its inline policy.
    pub role_policy: Option<serde_json::Value>,
    /// The function.
    pub function: FunctionObs,
    /// The DB instance's security groups.
    pub db_groups: BTreeSet<String>,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Create a security group.
    CreateGroup {
        /// Which.
        group: Group,
    },
    /// Admit TCP `port` from LambdaSG on `group`.
    AdmitFromLambda {
        /// Which.
        group: Group,
        /// Port.
        port: u16,
    },
    /// Create the Secrets Manager interface endpoint with private DNS.
    CreateEndpoint,
    /// Fix the endpoint: private DNS on, its subnets and SecretsManagerSG.
    ModifyEndpoint,
    /// Create the execution role (trust: Lambda).
    CreateRole,
    /// Put the execution policy on it.
    PutRolePolicy,
    /// Add DatabaseSG to the DB instance.
    AttachDatabaseGroup {
        /// The instance.
        db_instance: String,
    },
    /// Record the function's role and VPC configuration before the first change.
    RecordPrevious,
    /// Set the function's role and VPC configuration.
    UpdateFunction,
}

/// The changes that turn `o` into `spec`.
pub fn plan(spec: &Spec, o: &Observed) -> Vec<Action> {
    let mut out = Vec::new();
    let mut wanted = vec![Group::Lambda];
    if spec.db_port.is_some() {
        wanted.push(Group::Database);
    }
    if spec.secret_arn.is_some() {
        wanted.push(Group::SecretsManager);
    }
    for g in &wanted {
        if !o.groups.contains_key(g) {
            out.push(Action::CreateGroup { group: *g });
        }
    }
    let lambda_sg = o.groups.get(&Group::Lambda).map(|g| g.id.clone());
    let admits = |g: Group, port: u16| {
        o.groups.get(&g).is_some_and(|sg| {
            lambda_sg.as_ref().is_some_and(|l| {
                sg.ingress
                    .contains(&("tcp".to_string(), i32::from(port), l.clone()))
            })
        })
    };
    if let Some(port) = spec.db_port
        && !admits(Group::Database, port)
    {
        out.push(Action::AdmitFromLambda {
            group: Group::Database,
            port,
        });
    }
    if spec.secret_arn.is_some() {
        if !admits(Group::SecretsManager, 443) {
            out.push(Action::AdmitFromLambda {
                group: Group::SecretsManager,
                port: 443,
            });
        }
        match &o.endpoint {
            None => out.push(Action::CreateEndpoint),
            Some((_, dns, subnets, groups)) => {
                let sm = o.groups.get(&Group::SecretsManager).map(|g| &g.id);
                if !dns
                    || *subnets != spec.endpoint_subnets
                    || sm.is_none_or(|id| !groups.contains(id))
                {
                    out.push(Action::ModifyEndpoint);
                }
            }
        }
    }
    if o.role.is_none() {
        out.push(Action::CreateRole);
    }
    if o.role_policy.as_ref() != Some(&role_policy(spec)) {
        out.push(Action::PutRolePolicy);
    }
    if let Some(db) = &spec.db_instance {
        let db_sg = o.groups.get(&Group::Database).map(|g| &g.id);
        if db_sg.is_none_or(|id| !o.db_groups.contains(id)) {
            out.push(Action::AttachDatabaseGroup {
                db_instance: db.clone(),
            });
        }
    }
    if !o.function.tags.contains_key(PREVIOUS_ROLE_TAG) {
        out.push(Action::RecordPrevious);
    }
    let role_ok = o.role.as_ref().is_some_and(|r| *r == o.function.role);
    let vpc_ok = o.function.subnets == spec.subnets
        && lambda_sg
            .as_ref()
            .is_some_and(|l| o.function.groups.contains(l));
    if !role_ok || !vpc_ok {
        out.push(Action::UpdateFunction);
    }
    out
}

/// Bad input found while resolving the names the user gave.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// No such function.
    #[error("Lambda function {0} not found")]
    NoFunction(String),
    /// No such secret.
    #[error("secret {0} not found in Secrets Manager")]
    NoSecret(String),
    /// No such DB instance.
    #[error("DB instance {0} not found")]
    NoDbInstance(String),
    /// The DB instance is in another VPC.
    #[error("DB instance {db} is in {other}, not in {vpc}")]
    DbInOtherVpc {
        /// The instance.
        db: String,
        /// Its VPC.
        other: String,
        /// The stack's VPC.
        vpc: String,
    },
    /// A call failed.
    #[error(transparent)]
    Api(#[from] Error),
}

/// What the user named, resolved: (function ARN, secret ARN, DB port, DB VPC).
pub struct Resolved {
    /// The function's ARN.
    pub function_arn: String,
    /// The secret's ARN.
    pub secret_arn: Option<String>,
    /// The DB instance's port.
    pub db_port: Option<u16>,
}

/// Checks that the function, secret and DB instance exist (and the DB is in `vpc`).
pub async fn resolve(
    c: &Clients,
    vpc: &str,
    function: &str,
    secret: Option<&str>,
    db_instance: Option<&str>,
) -> Result<Resolved, Invalid> {
    let f = found(
        c.lambda.get_function().function_name(function).send().await,
        "GetFunction",
        function,
    )?
    .ok_or_else(|| Invalid::NoFunction(function.to_string()))?;
    let function_arn = f
        .configuration()
        .and_then(|c| c.function_arn())
        .unwrap_or_default()
        .to_string();
    let secret_arn = match secret {
        None => None,
        Some(s) => {
            let d = found(
                c.secrets.describe_secret().secret_id(s).send().await,
                "DescribeSecret",
                s,
            )?
            .ok_or_else(|| Invalid::NoSecret(s.to_string()))?;
            Some(d.arn().unwrap_or_default().to_string())
        }
    };
    let db_port = match db_instance {
        None => None,
        Some(db) => {
            let r = c
                .rds
                .describe_db_instances()
                .db_instance_identifier(db)
                .send()
                .await
                .map_err(ApiError::from);
            let r = match r {
                Ok(r) => r,
                Err(e) if e.code.as_deref() == Some("DBInstanceNotFound") => {
                    return Err(Invalid::NoDbInstance(db.to_string()));
                }
                Err(source) => {
                    return Err(Invalid::Api(Error {
                        op: "DescribeDBInstances",
                        target: db.to_string(),
                        source,
                    }));
                }
            };
            let i = r
                .db_instances()
                .first()
                .ok_or_else(|| Invalid::NoDbInstance(db.to_string()))?;
            let other = i.db_subnet_group().and_then(|g| g.vpc_id()).unwrap_or(vpc);
            if other != vpc {
                return Err(Invalid::DbInOtherVpc {
                    db: db.to_string(),
                    other: other.to_string(),
                    vpc: vpc.to_string(),
                });
            }
            i.endpoint()
                .and_then(|e| e.port())
                .and_then(|p| u16::try_from(p).ok())
        }
    };
    Ok(Resolved {
        function_arn,
        secret_arn,
        db_port,
    })
}

async fn stack_groups(c: &Clients, stack: &str) -> Result<BTreeMap<Group, SgObs>, Error> {
    use aws_sdk_ec2::types::Filter;
    let r = c
        .ec2
        .describe_security_groups()
        .filters(
            Filter::builder()
                .name(format!("tag:{STACK_TAG}"))
                .values(stack)
                .build(),
        )
        .send()
        .await
        .map_err(err("DescribeSecurityGroups", stack))?;
    let mut out = BTreeMap::new();
    for g in r.security_groups() {
        let kind = [Group::Lambda, Group::Database, Group::SecretsManager]
            .into_iter()
            .find(|k| g.group_name() == Some(k.name(stack).as_str()));
        let Some(kind) = kind else { continue };
        let ingress = g
            .ip_permissions()
            .iter()
            .flat_map(|p| {
                p.user_id_group_pairs().iter().filter_map(|pair| {
                    Some((
                        p.ip_protocol()?.to_string(),
                        p.from_port()?,
                        pair.group_id()?.to_string(),
                    ))
                })
            })
            .collect();
        out.insert(
            kind,
            SgObs {
                id: g.group_id().unwrap_or_default().to_string(),
                ingress,
            },
        );
    }
    Ok(out)
}

async fn stack_endpoints(
    c: &Clients,
    stack: &str,
) -> Result<Vec<aws_sdk_ec2::types::VpcEndpoint>, Error> {
    use aws_sdk_ec2::types::Filter;
    let r = c
        .ec2
        .describe_vpc_endpoints()
        .filters(
            Filter::builder()
                .name(format!("tag:{STACK_TAG}"))
                .values(stack)
                .build(),
        )
        .send()
        .await
        .map_err(err("DescribeVpcEndpoints", stack))?;
    Ok(r.vpc_endpoints()
        .iter()
        .filter(|e| {
            e.state()
                .is_none_or(|s| !matches!(s.as_str(), "deleted" | "deleting"))
        })
        .cloned()
        .collect())
}

/// Reads what exists.
pub async fn read(c: &Clients, spec: &Spec) -> Result<Observed, Error> {
    let mut o = Observed {
        groups: stack_groups(c, &spec.stack).await?,
        ..Observed::default()
    };
    if let Some(e) = stack_endpoints(c, &spec.stack).await?.first() {
        o.endpoint = Some((
            e.vpc_endpoint_id().unwrap_or_default().to_string(),
            e.private_dns_enabled().unwrap_or(false),
            e.subnet_ids().iter().cloned().collect(),
            e.groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_string))
                .collect(),
        ));
    }
    let role = spec.role();
    if let Some(r) = found(
        c.iam.get_role().role_name(&role).send().await,
        "GetRole",
        &role,
    )? {
        o.role = r.role().map(|r| r.arn().to_string());
        let p = c
            .iam
            .get_role_policy()
            .role_name(&role)
            .policy_name(&role)
            .send()
            .await;
        if let Some(p) = found(p, "GetRolePolicy", &role)? {
            o.role_policy =
                serde_json::from_str(&crate::dev::urlencoding_decode(p.policy_document())).ok();
        }
    }
    let f = c
        .lambda
        .get_function()
        .function_name(&spec.function)
        .send()
        .await
        .map_err(err("GetFunction", &spec.function))?;
    let conf = f.configuration();
    let vpc = conf.and_then(|c| c.vpc_config());
    o.function = FunctionObs {
        role: conf.and_then(|c| c.role()).unwrap_or_default().to_string(),
        subnets: vpc
            .map(|v| v.subnet_ids().iter().cloned().collect())
            .unwrap_or_default(),
        groups: vpc
            .map(|v| v.security_group_ids().iter().cloned().collect())
            .unwrap_or_default(),
        tags: f
            .tags()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    };
    if let Some(db) = &spec.db_instance {
        let r = c
            .rds
            .describe_db_instances()
            .db_instance_identifier(db)
            .send()
            .await
            .map_err(err("DescribeDBInstances", db))?;
        o.db_groups = r
            .db_instances()
            .iter()
            .flat_map(|i| i.vpc_security_groups())
            .filter_map(|g| g.vpc_security_group_id().map(str::to_string))
            .collect();
    }
    Ok(o)
}

/// Carries out `actions` in order.
pub async fn apply(
    c: &Clients,
    spec: &Spec,
    o: &Observed,
    actions: &[Action],
) -> Result<(), Error> {
    use aws_sdk_ec2::types::{
        IpPermission, ResourceType, Tag, TagSpecification, UserIdGroupPair, VpcEndpointType,
    };
    let mut groups: BTreeMap<Group, String> =
        o.groups.iter().map(|(k, g)| (*k, g.id.clone())).collect();
    let mut role_arn = o.role.clone();
    let tags = |kind: ResourceType, name: &str| {
        TagSpecification::builder()
            .resource_type(kind)
            .tags(Tag::builder().key(STACK_TAG).value(&spec.stack).build())
            .tags(Tag::builder().key("Name").value(name).build())
            .build()
    };
    for a in actions {
        match a {
            Action::CreateGroup { group } => {
                let name = group.name(&spec.stack);
                let what = match group {
                    Group::Lambda => format!("Lambda function {}", spec.function),
                    Group::Database => "database: admits its port from LambdaSG".to_string(),
                    Group::SecretsManager => {
                        "Secrets Manager endpoint: admits HTTPS from LambdaSG".to_string()
                    }
                };
                let r = c
                    .ec2
                    .create_security_group()
                    .group_name(&name)
                    .description(format!("natd stack {}: {what}", spec.stack))
                    .vpc_id(&spec.vpc)
                    .tag_specifications(tags(ResourceType::SecurityGroup, &name))
                    .send()
                    .await
                    .map_err(err("CreateSecurityGroup", &name))?;
                groups.insert(*group, r.group_id().unwrap_or_default().to_string());
            }
            Action::AdmitFromLambda { group, port } => {
                let id = groups.get(group).cloned().unwrap_or_default();
                let lambda = groups.get(&Group::Lambda).cloned().unwrap_or_default();
                c.ec2
                    .authorize_security_group_ingress()
                    .group_id(&id)
                    .ip_permissions(
                        IpPermission::builder()
                            .ip_protocol("tcp")
                            .from_port(i32::from(*port))
                            .to_port(i32::from(*port))
                            .user_id_group_pairs(
                                UserIdGroupPair::builder()
                                    .group_id(&lambda)
                                    .description("LambdaSG")
                                    .build(),
                            )
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(err("AuthorizeSecurityGroupIngress", &id))?;
            }
            Action::CreateEndpoint => {
                let sg = groups
                    .get(&Group::SecretsManager)
                    .cloned()
                    .unwrap_or_default();
                let name = format!("natd-{}-secretsmanager", spec.stack);
                c.ec2
                    .create_vpc_endpoint()
                    .vpc_id(&spec.vpc)
                    .vpc_endpoint_type(VpcEndpointType::Interface)
                    .service_name(spec.service())
                    .set_subnet_ids(Some(spec.endpoint_subnets.iter().cloned().collect()))
                    .security_group_ids(sg)
                    .private_dns_enabled(true)
                    .tag_specifications(tags(ResourceType::VpcEndpoint, &name))
                    .send()
                    .await
                    .map_err(err("CreateVpcEndpoint", &spec.service()))?;
            }
            Action::ModifyEndpoint => {
                let Some((id, _, subnets, sgs)) = &o.endpoint else {
                    continue;
                };
                let sg = groups
                    .get(&Group::SecretsManager)
                    .cloned()
                    .unwrap_or_default();
                let mut req = c
                    .ec2
                    .modify_vpc_endpoint()
                    .vpc_endpoint_id(id)
                    .private_dns_enabled(true);
                for s in spec.endpoint_subnets.difference(subnets) {
                    req = req.add_subnet_ids(s);
                }
                for s in subnets.difference(&spec.endpoint_subnets) {
                    req = req.remove_subnet_ids(s);
                }
                if !sgs.contains(&sg) {
                    req = req.add_security_group_ids(&sg);
                }
                req.send().await.map_err(err("ModifyVpcEndpoint", id))?;
            }
            Action::CreateRole => {
                let role = spec.role();
                let trust = serde_json::json!({
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]
                });
                let tag = |k: &str, v: &str| crate::dev::iam_tag("CreateRole", &role, k, v);
                let r = c
                    .iam
                    .create_role()
                    .role_name(&role)
                    .assume_role_policy_document(trust.to_string())
                    .tags(tag(STACK_TAG, &spec.stack)?)
                    .tags(tag(FUNCTION_TAG, &spec.function)?)
                    .send()
                    .await
                    .map_err(err("CreateRole", &role))?;
                role_arn = r.role().map(|r| r.arn().to_string());
            }
            Action::PutRolePolicy => {
                let role = spec.role();
                c.iam
                    .put_role_policy()
                    .role_name(&role)
                    .policy_name(&role)
                    .policy_document(role_policy(spec).to_string())
                    .send()
                    .await
                    .map_err(err("PutRolePolicy", &role))?;
            }
            Action::AttachDatabaseGroup { db_instance } => {
                let mut ids = o.db_groups.clone();
                ids.insert(groups.get(&Group::Database).cloned().unwrap_or_default());
                c.rds
                    .modify_db_instance()
                    .db_instance_identifier(db_instance)
                    .set_vpc_security_group_ids(Some(ids.into_iter().collect()))
                    .apply_immediately(true)
                    .send()
                    .await
                    .map_err(err("ModifyDBInstance", db_instance))?;
            }
            Action::RecordPrevious => {
                let previous_vpc = if o.function.subnets.is_empty() {
                    "none".to_string()
                } else {
                    format!(
                        "{}|{}",
                        o.function
                            .subnets
                            .iter()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(","),
                        o.function
                            .groups
                            .iter()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                };
                c.lambda
                    .tag_resource()
                    .resource(&spec.function_arn)
                    .tags(STACK_TAG, &spec.stack)
                    .tags(PREVIOUS_ROLE_TAG, &o.function.role)
                    .tags(PREVIOUS_VPC_TAG, previous_vpc)
                    .send()
                    .await
                    .map_err(err("TagResource", &spec.function))?;
            }
            Action::UpdateFunction => {
                let lambda = groups.get(&Group::Lambda).cloned().unwrap_or_default();
                c.lambda
                    .update_function_configuration()
                    .function_name(&spec.function)
                    .role(role_arn.clone().unwrap_or_default())
                    .vpc_config(
                        aws_sdk_lambda::types::VpcConfig::builder()
                            .set_subnet_ids(Some(spec.subnets.iter().cloned().collect()))
                            .security_group_ids(lambda)
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(err("UpdateFunctionConfiguration", &spec.function))?;
            }
        }
    }
    Ok(())
}

/// Removes the stack's Lambda wiring: puts the function's previous role and VPC
/// configuration back, takes DatabaseSG off the DB instances, deletes the endpoint,
/// the security groups and the execution role.
pub async fn remove(
    c: &Clients,
    stack: &str,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<crate::teardown::Removal>, Error> {
    use crate::teardown::Removal;
    let mut removed = Vec::new();
    let role = format!("natd-{stack}-lambda");
    let role_tags = crate::teardown::role_tags(c, &role).await?;
    let ours = role_tags.get(STACK_TAG).map(String::as_str) == Some(stack);
    // 1. The function: back to its previous role and VPC configuration.
    if let Some(function) = role_tags.get(FUNCTION_TAG).filter(|_| ours) {
        let f = found(
            c.lambda.get_function().function_name(function).send().await,
            "GetFunction",
            function,
        )?;
        let tags: BTreeMap<String, String> = f
            .as_ref()
            .and_then(|f| f.tags())
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        if let (Some(f), Some(previous_role)) = (&f, tags.get(PREVIOUS_ROLE_TAG)) {
            let arn = f
                .configuration()
                .and_then(|c| c.function_arn())
                .unwrap_or_default()
                .to_string();
            let previous = tags
                .get(PREVIOUS_VPC_TAG)
                .map(String::as_str)
                .unwrap_or("none");
            let (subnets, groups) = previous.split_once('|').unwrap_or(("", ""));
            let split = |s: &str| -> Vec<String> {
                s.split(',')
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect()
            };
            c.lambda
                .update_function_configuration()
                .function_name(function)
                .role(previous_role)
                .vpc_config(
                    aws_sdk_lambda::types::VpcConfig::builder()
                        .set_subnet_ids(Some(split(subnets)))
                        .set_security_group_ids(Some(split(groups)))
                        .build(),
                )
                .send()
                .await
                .map_err(err("UpdateFunctionConfiguration", function))?;
            c.lambda
                .untag_resource()
                .resource(&arn)
                .tag_keys(STACK_TAG)
                .tag_keys(PREVIOUS_ROLE_TAG)
                .tag_keys(PREVIOUS_VPC_TAG)
                .send()
                .await
                .map_err(err("UntagResource", function))?;
            removed.push(Removal {
                kind: "function configuration restored",
                id: function.clone(),
            });
        }
    }
    // 2. DatabaseSG off every DB instance that carries it.
    let groups = stack_groups(c, stack).await?;
    if let Some(db_sg) = groups.get(&Group::Database) {
        let dbs = c
            .rds
            .describe_db_instances()
            .send()
            .await
            .map_err(err("DescribeDBInstances", stack))?;
        for i in dbs.db_instances() {
            let ids: Vec<String> = i
                .vpc_security_groups()
                .iter()
                .filter_map(|g| g.vpc_security_group_id().map(str::to_string))
                .collect();
            if ids.contains(&db_sg.id) {
                let id = i.db_instance_identifier().unwrap_or_default();
                c.rds
                    .modify_db_instance()
                    .db_instance_identifier(id)
                    .set_vpc_security_group_ids(Some(
                        ids.into_iter().filter(|g| *g != db_sg.id).collect(),
                    ))
                    .apply_immediately(true)
                    .send()
                    .await
                    .map_err(err("ModifyDBInstance", id))?;
                removed.push(Removal {
                    kind: "DB instance security group detached",
                    id: id.to_string(),
                });
            }
        }
    }
    // 3. The endpoint, then the groups (SecretsManagerSG and DatabaseSG refer to
    //    LambdaSG, so they go first).
    for e in stack_endpoints(c, stack).await? {
        let id = e.vpc_endpoint_id().unwrap_or_default();
        c.ec2
            .delete_vpc_endpoints()
            .vpc_endpoint_ids(id)
            .send()
            .await
            .map_err(err("DeleteVpcEndpoints", id))?;
        removed.push(Removal {
            kind: "VPC endpoint",
            id: id.to_string(),
        });
    }
    for kind in [Group::SecretsManager, Group::Database, Group::Lambda] {
        if let Some(g) = groups.get(&kind) {
            let r = c.ec2.delete_security_group().group_id(&g.id).send().await;
            match r.map_err(ApiError::from) {
                Ok(_) => removed.push(Removal {
                    kind: "security group",
                    id: format!("{} ({})", g.id, kind.name(stack)),
                }),
                Err(e) if e.code.as_deref() == Some("DependencyViolation") => {
                    progress(&format!(
                        "{} is still in use (Lambda releases a function's network interfaces up to 20 minutes after its VPC configuration changes); run teardown again later",
                        g.id
                    ));
                    return Err(Error {
                        op: "DeleteSecurityGroup",
                        target: g.id.clone(),
                        source: e,
                    });
                }
                Err(source) => {
                    return Err(Error {
                        op: "DeleteSecurityGroup",
                        target: g.id.clone(),
                        source,
                    });
                }
            }
        }
    }
    // 4. The execution role.
    if ours {
        removed.push(crate::teardown::delete_role(c, &role).await?);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            stack: "s".into(),
            vpc: "vpc-1".into(),
            region: "eu-west-1".into(),
            function: "f".into(),
            function_arn: "arn:aws:lambda:eu-west-1:123456789012:function:f".into(),
            secret_arn: Some(
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf".into(),
            ),
            db_instance: Some("db1".into()),
            db_port: Some(5432),
            subnets: ["subnet-a".to_string(), "subnet-b".to_string()].into(),
            endpoint_subnets: ["subnet-a".to_string(), "subnet-b".to_string()].into(),
        }
    }

    fn built(s: &Spec) -> Observed {
        let lambda = "sg-l".to_string();
        let rule = |port| [("tcp".to_string(), port, lambda.clone())].into();
        Observed {
            groups: [
                (
                    Group::Lambda,
                    SgObs {
                        id: lambda.clone(),
                        ingress: BTreeSet::new(),
                    },
                ),
                (
                    Group::Database,
                    SgObs {
                        id: "sg-d".into(),
                        ingress: rule(5432),
                    },
                ),
                (
                    Group::SecretsManager,
                    SgObs {
                        id: "sg-s".into(),
                        ingress: rule(443),
                    },
                ),
            ]
            .into(),
            endpoint: Some((
                "vpce-1".into(),
                true,
                s.endpoint_subnets.clone(),
                ["sg-s".to_string()].into(),
            )),
            role: Some("arn:aws:iam::123456789012:role/natd-s-lambda".into()),
            role_policy: Some(role_policy(s)),
            function: FunctionObs {
                role: "arn:aws:iam::123456789012:role/natd-s-lambda".into(),
                subnets: s.subnets.clone(),
                groups: [lambda].into(),
                tags: [(PREVIOUS_ROLE_TAG.to_string(), "arn:old".to_string())].into(),
            },
            db_groups: ["sg-d".to_string(), "sg-default".to_string()].into(),
        }
    }

    #[test]
    fn policy_names_one_secret_and_its_own_log_group() {
        let p = role_policy(&spec());
        let text = p.to_string();
        assert!(text.contains("secret:db-AbCdEf\""));
        assert!(text.contains("log-group:/aws/lambda/f\""));
        assert!(!text.contains("secretsmanager:*"));
        let star_actions: Vec<&serde_json::Value> = p["Statement"]
            .as_array()
            .expect("statements")
            .iter()
            .filter(|s| s["Resource"] == "*")
            .flat_map(|s| s["Action"].as_array().expect("actions"))
            .collect();
        assert!(
            star_actions
                .iter()
                .all(|a| ENI_ACTIONS.contains(&a.as_str().unwrap_or("")))
        );
    }

    #[test]
    fn fresh_function_gets_everything_and_a_built_one_nothing() {
        let s = spec();
        let p = plan(&s, &Observed::default());
        for a in [
            Action::CreateGroup {
                group: Group::Lambda,
            },
            Action::CreateGroup {
                group: Group::Database,
            },
            Action::CreateGroup {
                group: Group::SecretsManager,
            },
            Action::AdmitFromLambda {
                group: Group::Database,
                port: 5432,
            },
            Action::AdmitFromLambda {
                group: Group::SecretsManager,
                port: 443,
            },
            Action::CreateEndpoint,
            Action::CreateRole,
            Action::PutRolePolicy,
            Action::AttachDatabaseGroup {
                db_instance: "db1".into(),
            },
            Action::RecordPrevious,
            Action::UpdateFunction,
        ] {
            assert!(p.contains(&a), "{a:?} missing from {p:?}");
        }
        assert_eq!(plan(&s, &built(&s)), vec![]);
    }

    #[test]
    fn drift_is_targeted() {
        let s = spec();
        let mut o = built(&s);
        o.endpoint.as_mut().expect("endpoint").1 = false;
        o.function.groups = ["sg-other".to_string()].into();
        assert_eq!(
            plan(&s, &o),
            vec![Action::ModifyEndpoint, Action::UpdateFunction]
        );
    }
}
