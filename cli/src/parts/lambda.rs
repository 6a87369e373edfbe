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
//! Owns: [`resolve`] (the names the user gave), [`Spec`], [`Observed`], [`Action`], the
//! pure [`plan`], [`read`], [`apply`]; what it leaves behind: [`Existing`], the pure
//! [`plan_remove`] and [`remove`]. The function's previous role and VPC configuration
//! are kept in its tags (`natd:previous-role`, `natd:previous-vpc[-N]`) so teardown can
//! put them back. One function per stack.

use super::Progress;
use crate::aws::names::{
    FUNCTION_TAG, Names, PREVIOUS_ROLE_TAG, PREVIOUS_VPC_TAG, STACK_TAG, ec2_tags, iam_tags,
    joined_tag, of_stack, split_tag, split_tag_keys,
};
use crate::aws::read;
use crate::aws::wait;
use crate::aws::{ApiFailure, Clients, Error, err, found};
use crate::topology::Topology;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long natctl waits for a function to be ready for an update, and for an update to
/// finish: a VPC function's update creates its network interfaces, which takes minutes
/// at worst.
const LAMBDA_WAIT: Duration = Duration::from_secs(300);
/// How long natctl retries an update naming a new role: IAM propagates within
/// seconds, occasionally a minute or two.
const IAM_PROPAGATION_WAIT: Duration = Duration::from_secs(180);
/// How long teardown waits for Lambda to release a function's network interfaces:
/// AWS documents up to 20 minutes, and releases of up to 45 minutes are reported; an
/// hour covers those with room. Progress is said every poll that changes and at least
/// every minute.
const ENI_RELEASE_WAIT: Duration = Duration::from_secs(60 * 60);
/// How long teardown retries deleting a security group something still uses (an
/// endpoint's, Lambda's or a terminated instance's interfaces going away).
pub(crate) const GROUP_IN_USE_WAIT: Duration = Duration::from_secs(5 * 60);

/// What AWS answers while time will fix it, and why in words: a role IAM has not
/// propagated to Lambda yet, or another update of the function still in progress.
fn update_not_yet(e: &ApiFailure) -> Option<&'static str> {
    if e.is("InvalidParameterValueException") && e.message.contains("cannot be assumed by Lambda") {
        Some(
            "the new execution role reaches Lambda once IAM has propagated it (seconds, sometimes a minute or two)",
        )
    } else if e.is("ResourceConflictException") {
        Some("Lambda takes one update of a function at a time, and another is in progress")
    } else {
        None
    }
}

/// What AWS answers while a security group is still in use by interfaces that are
/// going away, in words.
pub(crate) fn group_still_in_use(e: &ApiFailure) -> Option<&'static str> {
    e.is("DependencyViolation").then_some(
        "network interfaces that use it are still being deleted (an endpoint's, a function's or a terminated instance's)",
    )
}

/// Waits until `function` is active and no update of it is in progress (the SDK's
/// FunctionActiveV2 and FunctionUpdatedV2 waiters).
async fn settled(c: &Clients, function: &str, progress: Progress<'_>) -> Result<(), Error> {
    use aws_sdk_lambda::client::Waiters;
    wait::sdk(
        "the Lambda function to be active",
        function,
        LAMBDA_WAIT,
        progress,
        c.lambda
            .wait_until_function_active_v2()
            .function_name(function)
            .wait(LAMBDA_WAIT),
    )
    .await?;
    wait::sdk(
        "the Lambda function's last update to finish",
        function,
        LAMBDA_WAIT,
        progress,
        c.lambda
            .wait_until_function_updated_v2()
            .function_name(function)
            .wait(LAMBDA_WAIT),
    )
    .await?;
    Ok(())
}

/// Sets `function`'s role and VPC configuration: once it is settled, retrying while
/// the role propagates or another update finishes, then waits for the update to end.
async fn update_function(
    c: &Clients,
    function: &str,
    role: &str,
    vpc: aws_sdk_lambda::types::VpcConfig,
    progress: Progress<'_>,
) -> Result<(), Error> {
    settled(c, function, progress).await?;
    wait::retry_while(
        "Lambda to accept the update",
        function,
        IAM_PROPAGATION_WAIT,
        progress,
        update_not_yet,
        || async {
            c.lambda
                .update_function_configuration()
                .function_name(function)
                .role(role)
                .vpc_config(vpc.clone())
                .send()
                .await
                .map_err(err("UpdateFunctionConfiguration", function))
        },
    )
    .await?;
    settled(c, function, progress).await
}

/// EC2 calls a VPC function's execution role needs for its network interfaces, as
/// AWS's managed AWSLambdaVPCAccessExecutionRole grants them (DescribeSubnets included:
/// Lambda reads the function's subnets with the role). AWS does not scope them to
/// resources (the managed policy grants them on `*`), so these are the only actions
/// `doctor` accepts on `*`.
pub const ENI_ACTIONS: [&str; 6] = [
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
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
    /// All three, in the order they are removed (SecretsManagerSG and DatabaseSG refer
    /// to LambdaSG).
    pub const ALL: [Group; 3] = [Group::SecretsManager, Group::Database, Group::Lambda];

    /// Its name for stack `stack`.
    pub fn name(self, stack: &str) -> String {
        let n = Names(stack);
        match self {
            Group::Lambda => n.lambda(),
            Group::Database => n.database(),
            Group::SecretsManager => n.secrets_manager(),
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
    /// Who may use the Secrets Manager endpoint.
    pub endpoint_access: EndpointAccess,
    /// The VPC's CIDR blocks (what [`EndpointAccess::Vpc`] admits).
    pub vpc_cidrs: BTreeSet<String>,
    /// The customer-managed KMS key the secret is encrypted with, when it names one.
    pub kms_key: Option<String>,
    /// What the stack's Secrets Manager endpoint allows.
    pub endpoint_policy: EndpointPolicy,
    /// The resource policy setup puts on the secret; `None` leaves the secret's
    /// policy as it is.
    pub secret_policy: Option<SecretPolicy>,
    /// The execution role of the secret's rotation function, when it rotates.
    pub rotation_role: Option<String>,
    /// IPv6 egress for the function (`--ipv6`): its Ipv6AllowedForDualStack, and
    /// LambdaSG's outbound `::/0`. `None`: the function keeps the setting it has.
    pub ipv6: Option<bool>,
}

/// What the stack's Secrets Manager endpoint allows (its policy). An endpoint policy
/// does not grant anything: it is a second gate, after IAM and the secret's policy,
/// on what may pass through the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointPolicy {
    /// Only the stack's secret, only for the stack's execution role (and the secret's
    /// rotation function): nothing else in the VPC can use the endpoint, so stolen
    /// credentials of another account cannot carry data out through it.
    Stack,
    /// Any secret of this account, for principals of this account.
    Account,
    /// AWS's default: anything, for anyone.
    Open,
}

/// The resource policy setup puts on the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretPolicy {
    /// Only the execution role (and the rotation function's role) may read its value.
    Role,
    /// As `Role`, and the execution role only through the VPC's Secrets Manager
    /// endpoint.
    Endpoint,
    /// No policy from the stack: the one an earlier setup put is removed.
    Off,
}

/// The tag setup puts on a secret whose resource policy it wrote (value: the stack);
/// teardown removes that policy, and only that one.
pub const SECRET_POLICY_TAG: &str = "natd:secret-policy";

/// Who may use the Secrets Manager endpoint. Private DNS sends every workload in the
/// VPC to the endpoint for Secrets Manager, so its security group decides who can reach
/// Secrets Manager at all from the VPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointAccess {
    /// Only LambdaSG: least privilege on the network, and every other workload of the
    /// VPC loses Secrets Manager (its calls time out instead of going through NAT).
    Lambda,
    /// The VPC's CIDRs: every workload keeps Secrets Manager; IAM and the secret's
    /// policies decide what each may read.
    Vpc,
}

impl Spec {
    /// The spec for `topo`: the function runs in every private subnet, the endpoint in
    /// the first private subnet of each AZ.
    pub fn new(
        stack: &str,
        topo: &Topology,
        region: &str,
        function: &str,
        r: Resolved,
        access: EndpointAccess,
    ) -> Self {
        Spec {
            stack: stack.to_string(),
            vpc: topo.vpc_id.clone(),
            region: region.to_string(),
            function: function.to_string(),
            function_arn: r.function_arn,
            secret_arn: r.secret_arn,
            db_instance: r.db_instance,
            db_port: r.db_port,
            subnets: topo.private().cloned().collect(),
            endpoint_subnets: topo
                .azs
                .values()
                .filter_map(|z| z.private.first().cloned())
                .collect(),
            endpoint_access: access,
            vpc_cidrs: topo.vpc_cidrs.iter().cloned().collect(),
            kms_key: r.kms_key,
            endpoint_policy: EndpointPolicy::Stack,
            secret_policy: None,
            rotation_role: r.rotation_role,
            ipv6: None,
        }
    }

    /// The execution role's name.
    pub fn role(&self) -> String {
        Names(&self.stack).lambda()
    }

    /// The endpoint's service name.
    pub fn service(&self) -> String {
        format!("com.amazonaws.{}.secretsmanager", self.region)
    }

    /// The account (from the function's ARN).
    pub fn account(&self) -> &str {
        self.function_arn.split(':').nth(4).unwrap_or_default()
    }

    /// The execution role's ARN.
    pub fn role_arn(&self) -> String {
        format!("arn:aws:iam::{}:role/{}", self.account(), self.role())
    }

    /// The roles that may read the secret: the execution role, and the rotation
    /// function's.
    fn readers(&self) -> Vec<String> {
        let mut out = vec![self.role_arn()];
        out.extend(self.rotation_role.iter().cloned());
        out
    }
}

/// What a rotation function does with its secret (AWS's rotation templates).
const ROTATION_ACTIONS: [&str; 4] = [
    "secretsmanager:DescribeSecret",
    "secretsmanager:GetSecretValue",
    "secretsmanager:PutSecretValue",
    "secretsmanager:UpdateSecretVersionStage",
];

/// The Secrets Manager endpoint's policy, when the stack has a secret.
pub fn endpoint_policy(spec: &Spec) -> Option<serde_json::Value> {
    let secret = spec.secret_arn.as_ref()?;
    let statements = match spec.endpoint_policy {
        EndpointPolicy::Stack => {
            let mut st = vec![serde_json::json!({
                "Sid": "StackSecretOnly",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": secret,
                "Condition": {"ArnEquals": {"aws:PrincipalArn": spec.role_arn()}}
            })];
            if let Some(rot) = &spec.rotation_role {
                st.push(serde_json::json!({
                    "Sid": "RotationFunction",
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": ROTATION_ACTIONS,
                    "Resource": secret,
                    "Condition": {"ArnEquals": {"aws:PrincipalArn": rot}}
                }));
                st.push(serde_json::json!({
                    "Sid": "RotationPassword",
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "secretsmanager:GetRandomPassword",
                    "Resource": "*",
                    "Condition": {"ArnEquals": {"aws:PrincipalArn": rot}}
                }));
            }
            st
        }
        EndpointPolicy::Account => vec![
            serde_json::json!({
                "Sid": "ThisAccountsSecrets",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "secretsmanager:*",
                "Resource": format!("arn:aws:secretsmanager:{}:{}:secret:*", spec.region, spec.account()),
                "Condition": {"StringEquals": {"aws:PrincipalAccount": spec.account()}}
            }),
            serde_json::json!({
                "Sid": "ThisAccountsCalls",
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["secretsmanager:ListSecrets", "secretsmanager:GetRandomPassword", "secretsmanager:BatchGetSecretValue"],
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:PrincipalAccount": spec.account()}}
            }),
        ],
        EndpointPolicy::Open => vec![serde_json::json!({
            "Effect": "Allow",
            "Principal": "*",
            "Action": "*",
            "Resource": "*"
        })],
    };
    Some(serde_json::json!({"Version": "2012-10-17", "Statement": statements}))
}

/// The secret's resource policy for `--secret-policy`, given the endpoint the
/// function's calls go through (`vpce-...`, for [`SecretPolicy::Endpoint`]).
///
/// Only denies: an `Allow` in a secret's policy adds access, it cannot take any away.
/// It denies reading the value (`GetSecretValue`) to every principal but the readers,
/// and nothing else: the account's administrators keep describing, rotating, and
/// changing or deleting this policy, so no one is locked out of the secret.
pub fn secret_policy(spec: &Spec, endpoint: Option<&str>) -> Option<serde_json::Value> {
    let mode = spec.secret_policy.filter(|m| *m != SecretPolicy::Off)?;
    spec.secret_arn.as_ref()?;
    let mut st = vec![serde_json::json!({
        "Sid": "OnlyTheExecutionRoleReads",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "secretsmanager:GetSecretValue",
        "Resource": "*",
        "Condition": {"ArnNotEquals": {"aws:PrincipalArn": spec.readers()}}
    })];
    if mode == SecretPolicy::Endpoint {
        st.push(serde_json::json!({
            "Sid": "ExecutionRoleReadsThroughTheEndpoint",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": "*",
            "Condition": {
                "ArnEquals": {"aws:PrincipalArn": spec.role_arn()},
                "StringNotEquals": {"aws:SourceVpce": endpoint.unwrap_or("vpce-unknown")}
            }
        }));
    }
    Some(serde_json::json!({"Version": "2012-10-17", "Statement": st}))
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
        if let Some(key) = &spec.kms_key {
            // Only through Secrets Manager, and only for this secret's encryption
            // context. A key named by alias is not a resource IAM can match for
            // Decrypt: then the conditions alone scope it.
            let resource = if key.starts_with("arn:") && !key.contains(":alias/") {
                key.clone()
            } else if !key.starts_with("alias/") && !key.contains(":alias/") {
                format!("arn:aws:kms:{}:{account}:key/{key}", spec.region)
            } else {
                "*".to_string()
            };
            statements.push(serde_json::json!({
                "Sid": "DecryptThisSecret",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": resource,
                "Condition": {
                    "StringEquals": {
                        "kms:ViaService": format!("secretsmanager.{}.amazonaws.com", spec.region),
                        "kms:EncryptionContext:SecretARN": secret
                    }
                }
            }));
        }
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
    /// (protocol, from port, source CIDR).
    pub cidr_ingress: BTreeSet<(String, i32, String)>,
    /// It lets everything out to `::/0`.
    pub ipv6_egress: bool,
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
    /// Its VPC configuration's Ipv6AllowedForDualStack.
    pub ipv6: bool,
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
    /// The function the stack's execution role was made for, when it exists.
    pub wired: Option<String>,
    /// A Secrets Manager endpoint with private DNS in the VPC that is not the stack's
    /// (AWS allows one per VPC): (id, its security groups). The stack joins it.
    pub shared_endpoint: Option<(String, BTreeSet<String>)>,
    /// Same-named resources without the stack's tag: (kind, name or id).
    pub foreign: Vec<(&'static str, String)>,
    /// The stack's endpoint's policy.
    pub endpoint_policy: Option<serde_json::Value>,
    /// The secret's resource policy.
    pub secret_policy: Option<serde_json::Value>,
    /// Whether that policy is the stack's (the secret carries [`SECRET_POLICY_TAG`]).
    pub secret_policy_ours: bool,
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
    /// Admit TCP `port` from the VPC's CIDRs on SecretsManagerSG.
    AdmitFromVpc {
        /// Port.
        port: u16,
        /// The CIDRs.
        cidrs: Vec<String>,
    },
    /// Create the Secrets Manager interface endpoint with private DNS.
    CreateEndpoint,
    /// Add SecretsManagerSG to the VPC's existing Secrets Manager endpoint (not the
    /// stack's: AWS allows one with private DNS per VPC).
    JoinEndpoint {
        /// `vpce-...`
        endpoint: String,
    },
    /// Fix the endpoint: private DNS on, its subnets and SecretsManagerSG.
    ModifyEndpoint,
    /// Set the stack's endpoint's policy.
    SetEndpointPolicy,
    /// Put the resource policy on the secret (and tag it as the stack's).
    PutSecretPolicy,
    /// Remove the stack's resource policy from the secret (`--secret-policy off`).
    DeleteSecretPolicy,
    /// Create the execution role (trust: Lambda).
    CreateRole,
    /// Put the execution policy on it.
    PutRolePolicy,
    /// Add DatabaseSG to the DB instance.
    AttachDatabaseGroup {
        /// The instance.
        db_instance: String,
    },
    /// Let LambdaSG send anything to `::/0` (IPv6 egress; AWS gives a new group
    /// outbound IPv4 only when its VPC had no IPv6 block).
    AllowIpv6Egress,
    /// Record the function's role and VPC configuration before the first change.
    RecordPrevious,
    /// Set the function's role and VPC configuration.
    UpdateFunction,
}

/// Why setup refuses to wire the function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The stack already wires another function. One function per stack: its
    /// execution role is made for that function (its log group), and teardown puts
    /// that function's previous configuration back.
    #[error(
        "stack {stack} already wires Lambda function {wired}; a stack wires one function: tear it down first (natctl teardown --name {stack}) or give {asked} its own stack with another --name"
    )]
    OtherFunction {
        /// The stack.
        stack: String,
        /// The function it wires.
        wired: String,
        /// The function asked for.
        asked: String,
    },
    /// A resource with the stack's name exists and is not the stack's.
    #[error(transparent)]
    Foreign(#[from] super::Foreign),
    /// The secret has a resource policy setup did not write.
    #[error(
        "secret {secret} already has a resource policy that this stack did not write; natctl does not replace it: merge the statements of `natctl plan --output json` into it yourself, or run without --secret-policy"
    )]
    ForeignSecretPolicy {
        /// The secret.
        secret: String,
    },
}

/// The changes that turn `o` into `spec`.
pub fn plan(spec: &Spec, o: &Observed) -> Result<Vec<Action>, Refusal> {
    if let Some(f) = super::Foreign::first(&o.foreign, &spec.stack) {
        return Err(f.into());
    }
    if let Some(wired) = o.wired.as_ref().filter(|w| **w != spec.function) {
        return Err(Refusal::OtherFunction {
            stack: spec.stack.clone(),
            wired: wired.clone(),
            asked: spec.function.clone(),
        });
    }
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
        match spec.endpoint_access {
            EndpointAccess::Lambda if !admits(Group::SecretsManager, 443) => {
                out.push(Action::AdmitFromLambda {
                    group: Group::SecretsManager,
                    port: 443,
                });
            }
            EndpointAccess::Vpc => {
                let have = o
                    .groups
                    .get(&Group::SecretsManager)
                    .map(|g| g.cidr_ingress.clone())
                    .unwrap_or_default();
                let missing: Vec<String> = spec
                    .vpc_cidrs
                    .iter()
                    .filter(|c| !have.contains(&("tcp".to_string(), 443, (*c).clone())))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    out.push(Action::AdmitFromVpc {
                        port: 443,
                        cidrs: missing,
                    });
                }
            }
            EndpointAccess::Lambda => {}
        }
        let sm = o.groups.get(&Group::SecretsManager).map(|g| &g.id);
        match (&o.endpoint, &o.shared_endpoint) {
            (None, Some((id, groups))) => {
                if sm.is_none_or(|sm| !groups.contains(sm)) {
                    out.push(Action::JoinEndpoint {
                        endpoint: id.clone(),
                    });
                }
            }
            (None, None) => out.push(Action::CreateEndpoint),
            (Some((_, dns, subnets, groups)), _) => {
                if !dns
                    || *subnets != spec.endpoint_subnets
                    || sm.is_none_or(|id| !groups.contains(id))
                {
                    out.push(Action::ModifyEndpoint);
                }
                if o.endpoint_policy != endpoint_policy(spec) {
                    out.push(Action::SetEndpointPolicy);
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
    if let Some(secret) = &spec.secret_arn {
        let endpoint = o
            .endpoint
            .as_ref()
            .map(|e| e.0.as_str())
            .or(o.shared_endpoint.as_ref().map(|e| e.0.as_str()));
        match secret_policy(spec, endpoint) {
            Some(want) => {
                if o.secret_policy.is_some() && !o.secret_policy_ours {
                    return Err(Refusal::ForeignSecretPolicy {
                        secret: secret.clone(),
                    });
                }
                // Without an endpoint yet, its id is known only once it is created.
                let id_unknown =
                    endpoint.is_none() && spec.secret_policy == Some(SecretPolicy::Endpoint);
                if o.secret_policy.as_ref() != Some(&want) || id_unknown {
                    out.push(Action::PutSecretPolicy);
                }
            }
            None if spec.secret_policy == Some(SecretPolicy::Off) && o.secret_policy_ours => {
                out.push(Action::DeleteSecretPolicy);
            }
            None => {}
        }
    }
    if spec.ipv6 == Some(true) && !o.groups.get(&Group::Lambda).is_some_and(|g| g.ipv6_egress) {
        out.push(Action::AllowIpv6Egress);
    }
    if !o.function.tags.contains_key(PREVIOUS_ROLE_TAG) {
        out.push(Action::RecordPrevious);
    }
    let role_ok = o.role.as_ref().is_some_and(|r| *r == o.function.role);
    let vpc_ok = o.function.subnets == spec.subnets
        && lambda_sg
            .as_ref()
            .is_some_and(|l| o.function.groups.contains(l))
        && spec.ipv6.is_none_or(|v| v == o.function.ipv6);
    if !role_ok || !vpc_ok {
        out.push(Action::UpdateFunction);
    }
    Ok(out)
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
    /// The VPC cannot give the endpoint private DNS.
    #[error(
        "VPC {vpc} has {off} off: the Secrets Manager endpoint's private DNS needs enableDnsSupport and enableDnsHostnames (aws ec2 modify-vpc-attribute --vpc-id {vpc} --enable-dns-hostnames '{{\"Value\":true}}', and likewise --enable-dns-support)"
    )]
    VpcDns {
        /// The VPC.
        vpc: String,
        /// The attributes that are off.
        off: String,
    },
    /// A call failed.
    #[error(transparent)]
    Api(#[from] Error),
}

/// Checks that `vpc` can give the Secrets Manager endpoint private DNS: AWS requires
/// its enableDnsSupport and enableDnsHostnames. natctl does not change VPC-wide
/// settings; it says which to turn on.
pub async fn check_private_dns(c: &Clients, vpc: &str) -> Result<(), Invalid> {
    use aws_sdk_ec2::types::VpcAttributeName;
    let mut off = Vec::new();
    for (attr, name) in [
        (VpcAttributeName::EnableDnsSupport, "enableDnsSupport"),
        (VpcAttributeName::EnableDnsHostnames, "enableDnsHostnames"),
    ] {
        let r = c
            .ec2
            .describe_vpc_attribute()
            .vpc_id(vpc)
            .attribute(attr)
            .send()
            .await
            .map_err(err("DescribeVpcAttribute", vpc))?;
        let on = match name {
            "enableDnsSupport" => r.enable_dns_support().and_then(|v| v.value()),
            _ => r.enable_dns_hostnames().and_then(|v| v.value()),
        };
        if on != Some(true) {
            off.push(name);
        }
    }
    if off.is_empty() {
        Ok(())
    } else {
        Err(Invalid::VpcDns {
            vpc: vpc.to_string(),
            off: off.join(" and "),
        })
    }
}

/// What the user named, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The function's ARN.
    pub function_arn: String,
    /// The secret's ARN.
    pub secret_arn: Option<String>,
    /// The DB instance, when one is named.
    pub db_instance: Option<String>,
    /// The database port: the DB instance's, or the one given.
    pub db_port: Option<u16>,
    /// The customer-managed KMS key of the secret, when it has one (DescribeSecret's
    /// KmsKeyId; the AWS-managed `aws/secretsmanager` key needs no grant).
    pub kms_key: Option<String>,
    /// The execution role of the secret's rotation function, when it has one.
    pub rotation_role: Option<String>,
}

/// Checks that the function, secret and DB instance exist (and the DB is in `vpc`).
pub async fn resolve(
    c: &Clients,
    vpc: &str,
    function: &str,
    secret: Option<&str>,
    db_instance: Option<&str>,
    db_port: Option<u16>,
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
    let (secret_arn, kms_key, rotation_lambda) = match secret {
        None => (None, None, None),
        Some(s) => {
            let d = found(
                c.secrets.describe_secret().secret_id(s).send().await,
                "DescribeSecret",
                s,
            )?
            .ok_or_else(|| Invalid::NoSecret(s.to_string()))?;
            (
                Some(d.arn().unwrap_or_default().to_string()),
                d.kms_key_id()
                    .filter(|k| !k.ends_with("alias/aws/secretsmanager"))
                    .map(str::to_string),
                d.rotation_lambda_arn()
                    .filter(|a| !a.is_empty())
                    .map(str::to_string),
            )
        }
    };
    // The rotation function's role reads and writes the secret too; a rotation
    // function that is gone has no role to admit.
    let rotation_role = match &rotation_lambda {
        None => None,
        Some(arn) => found(
            c.lambda.get_function().function_name(arn).send().await,
            "GetFunction",
            arn,
        )?
        .and_then(|f| f.configuration().and_then(|c| c.role()).map(str::to_string)),
    };
    let port = match db_instance {
        None => None,
        Some(db) => {
            let r = c
                .rds
                .describe_db_instances()
                .db_instance_identifier(db)
                .send()
                .await
                .map_err(ApiFailure::from);
            let r = match r {
                Ok(r) => r,
                Err(e) if e.code.as_deref() == Some("DBInstanceNotFound") => {
                    return Err(Invalid::NoDbInstance(db.to_string()));
                }
                Err(source) => {
                    return Err(Invalid::Api(Error::Call {
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
        kms_key,
        rotation_role,
        db_instance: db_instance.map(str::to_string),
        db_port: db_port.or(port),
    })
}

/// The stack's security groups by kind, and same-named ones of others.
async fn stack_groups(
    c: &Clients,
    stack: &str,
) -> Result<(BTreeMap<Group, SgObs>, Vec<(&'static str, String)>), Error> {
    let names: Vec<String> = Group::ALL.iter().map(|g| g.name(stack)).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut out = BTreeMap::new();
    let mut foreign = Vec::new();
    for g in read::groups_named(c, None, &refs).await? {
        let Some(kind) = Group::ALL
            .into_iter()
            .find(|k| g.group_name() == Some(k.name(stack).as_str()))
        else {
            continue;
        };
        let id = g.group_id().unwrap_or_default().to_string();
        if !of_stack(g.tags(), stack) {
            foreign.push(("security group", format!("{} ({id})", kind.name(stack))));
            continue;
        }
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
        let cidr_ingress = g
            .ip_permissions()
            .iter()
            .flat_map(|p| {
                p.ip_ranges().iter().filter_map(|r| {
                    Some((
                        p.ip_protocol()?.to_string(),
                        p.from_port()?,
                        r.cidr_ip()?.to_string(),
                    ))
                })
            })
            .collect();
        let ipv6_egress = g.ip_permissions_egress().iter().any(|p| {
            p.ip_protocol() == Some("-1")
                && p.ipv6_ranges()
                    .iter()
                    .any(|r| r.cidr_ipv6() == Some(natd_contract::IPV6_DEFAULT_ROUTE))
        });
        out.insert(
            kind,
            SgObs {
                id,
                ingress,
                cidr_ingress,
                ipv6_egress,
            },
        );
    }
    Ok((out, foreign))
}

async fn stack_endpoints(
    c: &Clients,
    stack: &str,
) -> Result<Vec<aws_sdk_ec2::types::VpcEndpoint>, Error> {
    let mut e = read::vpc_endpoints(c, vec![crate::aws::names::stack_filter(stack)], stack).await?;
    e.retain(|e| of_stack(e.tags(), stack));
    Ok(e)
}

/// The function's configuration and tags.
async fn function(c: &Clients, name: &str) -> Result<Option<(FunctionObs, String)>, Error> {
    let Some(f) = found(
        c.lambda.get_function().function_name(name).send().await,
        "GetFunction",
        name,
    )?
    else {
        return Ok(None);
    };
    let conf = f.configuration();
    let vpc = conf.and_then(|c| c.vpc_config());
    Ok(Some((
        FunctionObs {
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
            ipv6: vpc
                .and_then(|v| v.ipv6_allowed_for_dual_stack())
                .unwrap_or(false),
        },
        conf.and_then(|c| c.function_arn())
            .unwrap_or_default()
            .to_string(),
    )))
}

/// Reads what exists.
pub async fn read(c: &Clients, spec: &Spec) -> Result<Observed, Error> {
    let (groups, foreign) = stack_groups(c, &spec.stack).await?;
    let mut o = Observed {
        groups,
        foreign,
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
        o.endpoint_policy = e
            .policy_document()
            .and_then(|d| serde_json::from_str(d).ok());
    }
    if let Some(secret) = &spec.secret_arn {
        if let Some(d) = found(
            c.secrets.describe_secret().secret_id(secret).send().await,
            "DescribeSecret",
            secret,
        )? {
            o.secret_policy_ours = d
                .tags()
                .iter()
                .any(|t| t.key() == Some(SECRET_POLICY_TAG) && t.value() == Some(&spec.stack));
        }
        o.secret_policy = found(
            c.secrets
                .get_resource_policy()
                .secret_id(secret)
                .send()
                .await,
            "GetResourcePolicy",
            secret,
        )?
        .and_then(|p| p.resource_policy().map(str::to_string))
        .and_then(|d| serde_json::from_str(&d).ok());
    }
    if spec.secret_arn.is_some() {
        let service = spec.service();
        o.shared_endpoint = read::vpc_endpoints(
            c,
            vec![
                crate::aws::names::filter("vpc-id", &[&spec.vpc]),
                crate::aws::names::filter("service-name", &[&service]),
            ],
            &service,
        )
        .await?
        .iter()
        .find(|e| !of_stack(e.tags(), &spec.stack) && e.private_dns_enabled() == Some(true))
        .map(|e| {
            (
                e.vpc_endpoint_id().unwrap_or_default().to_string(),
                e.groups()
                    .iter()
                    .filter_map(|g| g.group_id().map(str::to_string))
                    .collect(),
            )
        });
    }
    let role = spec.role();
    if let Some((arn, tags)) = read::role(c, &role).await? {
        if tags.get(STACK_TAG) == Some(&spec.stack) {
            o.role = Some(arn);
            o.role_policy = read::role_policy(c, &role, &role).await?;
            o.wired = tags.get(FUNCTION_TAG).cloned();
        } else {
            o.foreign.push(("IAM role", role.clone()));
        }
    }
    o.function = function(c, &spec.function)
        .await?
        .map(|(f, _)| f)
        .ok_or_else(|| Error::Missing {
            what: "Lambda function",
            target: spec.function.clone(),
        })?;
    if let Some(db) = &spec.db_instance {
        o.db_groups = db_groups(c, Some(db))
            .await?
            .into_iter()
            .flat_map(|(_, g)| g)
            .collect();
    }
    Ok(o)
}

/// DB instances (`db`, or all) with their security groups.
async fn db_groups(c: &Clients, db: Option<&str>) -> Result<Vec<(String, Vec<String>)>, Error> {
    let instances = c
        .rds
        .describe_db_instances()
        .set_db_instance_identifier(db.map(str::to_string))
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(err("DescribeDBInstances", db.unwrap_or("all")))?;
    Ok(instances
        .iter()
        .map(|i| {
            (
                i.db_instance_identifier().unwrap_or_default().to_string(),
                i.vpc_security_groups()
                    .iter()
                    .filter_map(|g| g.vpc_security_group_id().map(str::to_string))
                    .collect(),
            )
        })
        .collect())
}

/// `subnets|groups` of a function's VPC configuration, or `none`.
fn vpc_record(f: &FunctionObs) -> String {
    if f.subnets.is_empty() {
        return "none".to_string();
    }
    let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
    let ipv6 = if f.ipv6 { "|ipv6" } else { "" };
    format!("{}|{}{ipv6}", join(&f.subnets), join(&f.groups))
}

/// The subnets and groups of a [`vpc_record`], and whether it allowed IPv6.
fn parse_vpc_record(s: &str) -> (Vec<String>, Vec<String>, bool) {
    let (s, ipv6) = match s.strip_suffix("|ipv6") {
        Some(rest) => (rest, true),
        None => (s, false),
    };
    let (subnets, groups) = s.split_once('|').unwrap_or(("", ""));
    let split = |s: &str| -> Vec<String> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    };
    (split(subnets), split(groups), ipv6)
}

/// Removes the resource policy the stack put on `secret`, and its tag.
async fn drop_secret_policy(c: &Clients, secret: &str) -> Result<(), Error> {
    let r = c
        .secrets
        .delete_resource_policy()
        .secret_id(secret)
        .send()
        .await;
    if found(r, "DeleteResourcePolicy", secret)?.is_none() {
        return Ok(());
    }
    c.secrets
        .untag_resource()
        .secret_id(secret)
        .tag_keys(SECRET_POLICY_TAG)
        .send()
        .await
        .map_err(err("UntagResource", secret))?;
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
    use aws_sdk_ec2::types::{IpPermission, ResourceType, UserIdGroupPair, VpcEndpointType};
    let mut groups: BTreeMap<Group, String> =
        o.groups.iter().map(|(k, g)| (*k, g.id.clone())).collect();
    let mut role_arn = o.role.clone();
    let mut endpoint_id = o
        .endpoint
        .as_ref()
        .map(|e| e.0.clone())
        .or(o.shared_endpoint.as_ref().map(|e| e.0.clone()));
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
                    .tag_specifications(ec2_tags(
                        ResourceType::SecurityGroup,
                        &spec.stack,
                        &name,
                        &[],
                    ))
                    .send()
                    .await
                    .map_err(err("CreateSecurityGroup", &name))?;
                groups.insert(*group, r.group_id().unwrap_or_default().to_string());
            }
            Action::AllowIpv6Egress => {
                let id = groups.get(&Group::Lambda).cloned().unwrap_or_default();
                let r = c
                    .ec2
                    .authorize_security_group_egress()
                    .group_id(&id)
                    .ip_permissions(
                        IpPermission::builder()
                            .ip_protocol("-1")
                            .ipv6_ranges(
                                aws_sdk_ec2::types::Ipv6Range::builder()
                                    .cidr_ipv6(natd_contract::IPV6_DEFAULT_ROUTE)
                                    .description("IPv6 egress (egress-only internet gateway)")
                                    .build(),
                            )
                            .build(),
                    )
                    .send()
                    .await;
                // AWS added it itself (a group made in a VPC with IPv6): it is there.
                if let Err(e) = r {
                    let e = crate::aws::ApiFailure::from(e);
                    if !e.is("InvalidPermission.Duplicate") {
                        return Err(Error::Call {
                            op: "AuthorizeSecurityGroupEgress",
                            target: id,
                            source: e,
                        });
                    }
                }
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
            Action::AdmitFromVpc { port, cidrs } => {
                let id = groups
                    .get(&Group::SecretsManager)
                    .cloned()
                    .unwrap_or_default();
                let mut perm = IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(i32::from(*port))
                    .to_port(i32::from(*port));
                for cidr in cidrs {
                    perm = perm.ip_ranges(
                        aws_sdk_ec2::types::IpRange::builder()
                            .cidr_ip(cidr)
                            .description("the VPC")
                            .build(),
                    );
                }
                c.ec2
                    .authorize_security_group_ingress()
                    .group_id(&id)
                    .ip_permissions(perm.build())
                    .send()
                    .await
                    .map_err(err("AuthorizeSecurityGroupIngress", &id))?;
            }
            Action::JoinEndpoint { endpoint } => {
                let sg = groups
                    .get(&Group::SecretsManager)
                    .cloned()
                    .unwrap_or_default();
                c.ec2
                    .modify_vpc_endpoint()
                    .vpc_endpoint_id(endpoint)
                    .add_security_group_ids(sg)
                    .send()
                    .await
                    .map_err(err("ModifyVpcEndpoint", endpoint))?;
            }
            Action::CreateEndpoint => {
                let sg = groups
                    .get(&Group::SecretsManager)
                    .cloned()
                    .unwrap_or_default();
                let r = c
                    .ec2
                    .create_vpc_endpoint()
                    .vpc_id(&spec.vpc)
                    .vpc_endpoint_type(VpcEndpointType::Interface)
                    .service_name(spec.service())
                    .set_subnet_ids(Some(spec.endpoint_subnets.iter().cloned().collect()))
                    .security_group_ids(sg)
                    .private_dns_enabled(true)
                    .set_policy_document(endpoint_policy(spec).map(|p| p.to_string()))
                    .tag_specifications(ec2_tags(
                        ResourceType::VpcEndpoint,
                        &spec.stack,
                        &Names(&spec.stack).secrets_manager(),
                        &[],
                    ))
                    .send()
                    .await
                    .map_err(err("CreateVpcEndpoint", &spec.service()))?;
                endpoint_id = r
                    .vpc_endpoint()
                    .and_then(|e| e.vpc_endpoint_id())
                    .map(str::to_string);
            }
            Action::SetEndpointPolicy => {
                let Some((id, ..)) = &o.endpoint else {
                    continue;
                };
                c.ec2
                    .modify_vpc_endpoint()
                    .vpc_endpoint_id(id)
                    .set_policy_document(endpoint_policy(spec).map(|p| p.to_string()))
                    .send()
                    .await
                    .map_err(err("ModifyVpcEndpoint", id))?;
            }
            Action::PutSecretPolicy => {
                let (Some(secret), Some(doc)) = (
                    &spec.secret_arn,
                    secret_policy(spec, endpoint_id.as_deref()),
                ) else {
                    continue;
                };
                c.secrets
                    .put_resource_policy()
                    .secret_id(secret)
                    .resource_policy(doc.to_string())
                    .block_public_policy(true)
                    .send()
                    .await
                    .map_err(err("PutResourcePolicy", secret))?;
                c.secrets
                    .tag_resource()
                    .secret_id(secret)
                    .tags(
                        aws_sdk_secretsmanager::types::Tag::builder()
                            .key(SECRET_POLICY_TAG)
                            .value(&spec.stack)
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(err("TagResource", secret))?;
            }
            Action::DeleteSecretPolicy => {
                if let Some(secret) = &spec.secret_arn {
                    drop_secret_policy(c, secret).await?;
                }
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
                let r = c
                    .iam
                    .create_role()
                    .role_name(&role)
                    .assume_role_policy_document(trust.to_string())
                    .set_tags(Some(iam_tags(
                        "CreateRole",
                        &role,
                        &spec.stack,
                        &[(FUNCTION_TAG, &spec.function)],
                    )?))
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
                let mut req = c
                    .lambda
                    .tag_resource()
                    .resource(&spec.function_arn)
                    .tags(STACK_TAG, &spec.stack)
                    .tags(PREVIOUS_ROLE_TAG, &o.function.role);
                for (k, v) in split_tag(PREVIOUS_VPC_TAG, &vpc_record(&o.function)) {
                    req = req.tags(k, v);
                }
                req.send()
                    .await
                    .map_err(err("TagResource", &spec.function))?;
            }
            Action::UpdateFunction => {
                let lambda = groups.get(&Group::Lambda).cloned().unwrap_or_default();
                update_function(
                    c,
                    &spec.function,
                    &role_arn.clone().unwrap_or_default(),
                    aws_sdk_lambda::types::VpcConfig::builder()
                        .set_subnet_ids(Some(spec.subnets.iter().cloned().collect()))
                        .security_group_ids(lambda)
                        .ipv6_allowed_for_dual_stack(spec.ipv6.unwrap_or(o.function.ipv6))
                        .build(),
                    progress,
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// The function the stack wires, as it will be restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Wired {
    /// Its name.
    pub function: String,
    /// Its ARN.
    pub arn: String,
    /// Its role before the stack.
    pub previous_role: String,
    /// Its subnets before the stack.
    pub previous_subnets: Vec<String>,
    /// Its security groups before the stack.
    pub previous_groups: Vec<String>,
    /// Its Ipv6AllowedForDualStack before the stack.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub previous_ipv6: bool,
    /// The tags the stack put on it.
    pub tag_keys: Vec<String>,
}

/// What exists of the part, for its removal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    /// The function, when the stack's role names it and it carries its previous
    /// configuration.
    pub function: Option<Wired>,
    /// DB instances carrying DatabaseSG: (instance, its groups without DatabaseSG).
    pub databases: Vec<(String, Vec<String>)>,
    /// The stack's Secrets Manager endpoints.
    pub endpoints: Vec<String>,
    /// Endpoints of others the stack joined: (endpoint, SecretsManagerSG).
    pub joined: Vec<(String, String)>,
    /// The stack's security groups.
    pub groups: BTreeMap<Group, String>,
    /// The execution role (with the stack's tag).
    pub role: Option<String>,
    /// Secrets carrying a resource policy the stack wrote.
    pub secret_policies: Vec<String>,
}

/// One removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Removal {
    /// Delete the resource policy the stack put on a secret (first: the function's
    /// previous role may read the secret again).
    DeleteSecretPolicy {
        /// The secret's ARN.
        secret: String,
    },
    /// Put the function's previous role and VPC configuration back, and remove the
    /// stack's tags from it.
    RestoreFunction {
        /// The function.
        function: Wired,
    },
    /// Wait until Lambda has released the function's network interfaces (they hold
    /// LambdaSG; AWS takes up to ~20 minutes after the VPC configuration changed).
    WaitInterfacesReleased {
        /// The function.
        function: String,
        /// LambdaSG.
        group: String,
    },
    /// Take DatabaseSG off a DB instance.
    DetachDatabaseGroup {
        /// The instance.
        db_instance: String,
        /// The groups it keeps.
        keep: Vec<String>,
    },
    /// Delete the Secrets Manager endpoint.
    DeleteEndpoint {
        /// `vpce-...`
        id: String,
    },
    /// Take SecretsManagerSG off an endpoint the stack joined (it stays).
    LeaveEndpoint {
        /// `vpce-...`
        endpoint: String,
        /// SecretsManagerSG.
        group: String,
    },
    /// Delete one of the stack's security groups.
    DeleteSecurityGroup {
        /// Which.
        group: Group,
        /// `sg-...`
        id: String,
    },
    /// Delete the execution role.
    DeleteRole {
        /// Its name.
        name: String,
    },
}

/// Reads what exists of the stack's part.
pub async fn read_existing(c: &Clients, stack: &str) -> Result<Existing, Error> {
    let mut e = Existing::default();
    let role = Names(stack).lambda();
    let role_tags = read::role(c, &role)
        .await?
        .map(|(_, t)| t)
        .unwrap_or_default();
    let ours = role_tags.get(STACK_TAG).map(String::as_str) == Some(stack);
    if ours {
        e.role = Some(role);
        if let Some(name) = role_tags.get(FUNCTION_TAG)
            && let Some((f, arn)) = function(c, name).await?
            && let Some(previous_role) = f.tags.get(PREVIOUS_ROLE_TAG)
        {
            let record = joined_tag(&f.tags, PREVIOUS_VPC_TAG).unwrap_or_else(|| "none".into());
            let (previous_subnets, previous_groups, previous_ipv6) = parse_vpc_record(&record);
            let mut tag_keys = split_tag_keys(&f.tags, PREVIOUS_VPC_TAG);
            tag_keys.push(PREVIOUS_ROLE_TAG.to_string());
            if f.tags.contains_key(STACK_TAG) {
                tag_keys.push(STACK_TAG.to_string());
            }
            tag_keys.sort();
            e.function = Some(Wired {
                function: name.clone(),
                arn,
                previous_role: previous_role.clone(),
                previous_subnets,
                previous_groups,
                previous_ipv6,
                tag_keys,
            });
        }
    }
    let (groups, _) = stack_groups(c, stack).await?;
    e.groups = groups.into_iter().map(|(k, g)| (k, g.id)).collect();
    if let Some(db_sg) = e.groups.get(&Group::Database) {
        for (db, ids) in db_groups(c, None).await? {
            if ids.contains(db_sg) {
                e.databases
                    .push((db, ids.into_iter().filter(|g| g != db_sg).collect()));
            }
        }
    }
    if let Some(sm) = e.groups.get(&Group::SecretsManager) {
        let vpc = read::security_groups(c, vec![crate::aws::names::filter("group-id", &[sm])], sm)
            .await?
            .first()
            .and_then(|g| g.vpc_id().map(str::to_string));
        if let Some(vpc) = vpc {
            for ep in
                read::vpc_endpoints(c, vec![crate::aws::names::filter("vpc-id", &[&vpc])], &vpc)
                    .await?
            {
                let joined = !of_stack(ep.tags(), stack)
                    && ep
                        .groups()
                        .iter()
                        .any(|g| g.group_id() == Some(sm.as_str()));
                if joined {
                    e.joined.push((
                        ep.vpc_endpoint_id().unwrap_or_default().to_string(),
                        sm.clone(),
                    ));
                }
            }
        }
    }
    e.endpoints = stack_endpoints(c, stack)
        .await?
        .iter()
        .filter_map(|e| e.vpc_endpoint_id().map(str::to_string))
        .collect();
    let tagged = c
        .secrets
        .list_secrets()
        .filters(
            aws_sdk_secretsmanager::types::Filter::builder()
                .key(aws_sdk_secretsmanager::types::FilterNameStringType::TagKey)
                .values(SECRET_POLICY_TAG)
                .build(),
        )
        .into_paginator()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(err("ListSecrets", SECRET_POLICY_TAG))?;
    e.secret_policies = tagged
        .iter()
        .flat_map(|page| page.secret_list())
        .filter(|s| {
            s.tags()
                .iter()
                .any(|t| t.key() == Some(SECRET_POLICY_TAG) && t.value() == Some(stack))
        })
        .filter_map(|s| s.arn().map(str::to_string))
        .collect();
    Ok(e)
}

/// The removals that take `e` away, in dependency order: the function first (it holds
/// LambdaSG and the role), DatabaseSG off the databases, the endpoint, the groups
/// (those referring to LambdaSG first), the role.
pub fn plan_remove(e: &Existing) -> Vec<Removal> {
    let mut out: Vec<Removal> = e
        .secret_policies
        .iter()
        .map(|s| Removal::DeleteSecretPolicy { secret: s.clone() })
        .collect();
    if let Some(f) = &e.function {
        out.push(Removal::RestoreFunction {
            function: f.clone(),
        });
        if let Some(group) = e.groups.get(&Group::Lambda) {
            out.push(Removal::WaitInterfacesReleased {
                function: f.function.clone(),
                group: group.clone(),
            });
        }
    }
    for (db, keep) in &e.databases {
        out.push(Removal::DetachDatabaseGroup {
            db_instance: db.clone(),
            keep: keep.clone(),
        });
    }
    for id in &e.endpoints {
        out.push(Removal::DeleteEndpoint { id: id.clone() });
    }
    for (endpoint, group) in &e.joined {
        out.push(Removal::LeaveEndpoint {
            endpoint: endpoint.clone(),
            group: group.clone(),
        });
    }
    for g in Group::ALL {
        if let Some(id) = e.groups.get(&g) {
            out.push(Removal::DeleteSecurityGroup {
                group: g,
                id: id.clone(),
            });
        }
    }
    if let Some(name) = &e.role {
        out.push(Removal::DeleteRole { name: name.clone() });
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
            Removal::DeleteSecretPolicy { secret } => drop_secret_policy(c, secret).await?,
            Removal::RestoreFunction { function: f } => {
                update_function(
                    c,
                    &f.function,
                    &f.previous_role,
                    aws_sdk_lambda::types::VpcConfig::builder()
                        .set_subnet_ids(Some(f.previous_subnets.clone()))
                        .set_security_group_ids(Some(f.previous_groups.clone()))
                        .ipv6_allowed_for_dual_stack(f.previous_ipv6)
                        .build(),
                    progress,
                )
                .await?;
                c.lambda
                    .untag_resource()
                    .resource(&f.arn)
                    .set_tag_keys(Some(f.tag_keys.clone()))
                    .send()
                    .await
                    .map_err(err("UntagResource", &f.function))?;
            }
            Removal::DetachDatabaseGroup { db_instance, keep } => {
                c.rds
                    .modify_db_instance()
                    .db_instance_identifier(db_instance)
                    .set_vpc_security_group_ids(Some(keep.clone()))
                    .apply_immediately(true)
                    .send()
                    .await
                    .map_err(err("ModifyDBInstance", db_instance))?;
            }
            Removal::LeaveEndpoint { endpoint, group } => {
                let r = c
                    .ec2
                    .modify_vpc_endpoint()
                    .vpc_endpoint_id(endpoint)
                    .remove_security_group_ids(group)
                    .send()
                    .await;
                found(r, "ModifyVpcEndpoint", endpoint)?;
            }
            Removal::DeleteEndpoint { id } => {
                let r = c
                    .ec2
                    .delete_vpc_endpoints()
                    .vpc_endpoint_ids(id)
                    .send()
                    .await;
                found(r, "DeleteVpcEndpoints", id)?;
            }
            Removal::WaitInterfacesReleased { function, group } => {
                // Lambda keeps a VPC configuration's interfaces while any version of
                // the function uses it: published versions keep the configuration
                // they were published with, so their interfaces are never released.
                let holding = versions_in_vpc(c, function, group).await?;
                if !holding.is_empty() {
                    return Err(Error::Failed {
                        what: "Lambda function",
                        target: function.clone(),
                        reason: format!(
                            "published version(s) {} still carry the VPC configuration with security group {group}, so Lambda keeps their network interfaces and the group cannot go: delete those versions (aws lambda delete-function --function-name {function} --qualifier N) or point their aliases elsewhere first, then run teardown again",
                            holding.join(", ")
                        ),
                    });
                }
                wait::until(
                    "Lambda to release the function's network interfaces",
                    function,
                    ENI_RELEASE_WAIT,
                    progress,
                    || async {
                        let held = c
                            .ec2
                            .describe_network_interfaces()
                            .filters(crate::aws::names::filter("group-id", &[group]))
                            .into_paginator()
                            .items()
                            .send()
                            .collect::<Result<Vec<_>, _>>()
                            .await
                            .map_err(err("DescribeNetworkInterfaces", group))?;
                        Ok(if held.is_empty() {
                            wait::Poll::Ready(())
                        } else {
                            let ids: Vec<&str> = held
                                .iter()
                                .filter_map(|i| i.network_interface_id())
                                .collect();
                            wait::Poll::Waiting(format!(
                                "{} network interface(s) still hold {group} ({}); Lambda releases them within 20 minutes, sometimes 45, after the function leaves the VPC",
                                held.len(),
                                ids.join(", ")
                            ))
                        })
                    },
                )
                .await?;
            }
            Removal::DeleteSecurityGroup { id, .. } => {
                wait::retry_while(
                    "the security group to be free",
                    id,
                    GROUP_IN_USE_WAIT,
                    progress,
                    group_still_in_use,
                    || async {
                        let r = c.ec2.delete_security_group().group_id(id).send().await;
                        found(r, "DeleteSecurityGroup", id).map(|_| ())
                    },
                )
                .await?;
            }
            Removal::DeleteRole { name } => read::delete_role(c, name).await?,
        }
    }
    Ok(())
}

/// The published versions of `function` whose VPC configuration carries `group` (not
/// `$LATEST`, which teardown has just taken out of the VPC). None when the function is
/// gone.
async fn versions_in_vpc(c: &Clients, function: &str, group: &str) -> Result<Vec<String>, Error> {
    let r = c
        .lambda
        .list_versions_by_function()
        .function_name(function)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(ApiFailure::from);
    let versions = match r {
        Ok(v) => v,
        Err(e) if e.is("ResourceNotFoundException") => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Call {
                op: "ListVersionsByFunction",
                target: function.to_string(),
                source,
            });
        }
    };
    Ok(versions
        .iter()
        .filter(|v| v.version().is_some_and(|v| v != "$LATEST"))
        .filter(|v| {
            v.vpc_config()
                .is_some_and(|vpc| vpc.security_group_ids().iter().any(|g| g == group))
        })
        .filter_map(|v| v.version().map(str::to_string))
        .collect())
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
            endpoint_access: EndpointAccess::Lambda,
            vpc_cidrs: ["10.0.0.0/16".to_string()].into(),
            kms_key: None,
            endpoint_policy: EndpointPolicy::Stack,
            secret_policy: None,
            rotation_role: None,
            ipv6: None,
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
                        cidr_ingress: BTreeSet::new(),
                        ipv6_egress: false,
                    },
                ),
                (
                    Group::Database,
                    SgObs {
                        id: "sg-d".into(),
                        ingress: rule(5432),
                        cidr_ingress: BTreeSet::new(),
                        ipv6_egress: false,
                    },
                ),
                (
                    Group::SecretsManager,
                    SgObs {
                        id: "sg-s".into(),
                        ingress: rule(443),
                        cidr_ingress: BTreeSet::new(),
                        ipv6_egress: false,
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
                ipv6: false,
            },
            db_groups: ["sg-d".to_string(), "sg-default".to_string()].into(),
            wired: Some("f".into()),
            shared_endpoint: None,
            foreign: vec![],
            endpoint_policy: endpoint_policy(s),
            secret_policy: None,
            secret_policy_ours: false,
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
        let p = plan(&s, &Observed::default()).expect("plan");
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
        assert_eq!(plan(&s, &built(&s)).expect("plan"), vec![]);
    }

    #[test]
    fn drift_is_targeted() {
        let s = spec();
        let mut o = built(&s);
        o.endpoint.as_mut().expect("endpoint").1 = false;
        o.function.groups = ["sg-other".to_string()].into();
        assert_eq!(
            plan(&s, &o).expect("plan"),
            vec![Action::ModifyEndpoint, Action::UpdateFunction]
        );
    }

    #[test]
    fn a_second_function_and_a_foreign_role_are_refused() {
        let s = spec();
        let mut o = built(&s);
        o.wired = Some("g".into());
        let e = plan(&s, &o).expect_err("another function");
        assert!(
            e.to_string().contains("already wires Lambda function g"),
            "{e}"
        );
        let mut o = Observed::default();
        o.foreign.push(("IAM role", "natd-s-lambda".into()));
        assert!(plan(&s, &o).is_err());
    }

    #[test]
    fn previous_configuration_survives_the_tag_limit() {
        let f = FunctionObs {
            role: "arn:old".into(),
            subnets: (0..16).map(|i| format!("subnet-{i:017x}")).collect(),
            groups: (0..5).map(|i| format!("sg-{i:017x}")).collect(),
            tags: BTreeMap::new(),
            ipv6: true,
        };
        let record = vpc_record(&f);
        assert!(record.len() > crate::aws::names::TAG_VALUE_MAX);
        let tags: BTreeMap<String, String> =
            split_tag(PREVIOUS_VPC_TAG, &record).into_iter().collect();
        let (subnets, groups, ipv6) =
            parse_vpc_record(&joined_tag(&tags, PREVIOUS_VPC_TAG).expect("tag"));
        assert_eq!(subnets, f.subnets.iter().cloned().collect::<Vec<_>>());
        assert_eq!(groups, f.groups.iter().cloned().collect::<Vec<_>>());
        assert!(ipv6, "the function allowed IPv6 before the stack");
        assert_eq!(parse_vpc_record("none"), (vec![], vec![], false));
        assert_eq!(
            parse_vpc_record("subnet-1|sg-1"),
            (vec!["subnet-1".into()], vec!["sg-1".into()], false)
        );
    }

    #[test]
    fn removal_restores_the_function_before_its_groups_and_role() {
        let e = Existing {
            function: Some(Wired {
                function: "f".into(),
                arn: "arn:f".into(),
                previous_role: "arn:old".into(),
                previous_subnets: vec![],
                previous_groups: vec![],
                previous_ipv6: false,
                tag_keys: vec![STACK_TAG.into()],
            }),
            databases: vec![("db1".into(), vec!["sg-default".into()])],
            endpoints: vec!["vpce-1".into()],
            joined: vec![("vpce-theirs".into(), "sg-s".into())],
            groups: [
                (Group::Lambda, "sg-l".to_string()),
                (Group::Database, "sg-d".to_string()),
            ]
            .into(),
            role: Some("natd-s-lambda".into()),
            secret_policies: vec!["arn:secret".into()],
        };
        let r = plan_remove(&e);
        assert_eq!(
            r.first(),
            Some(&Removal::DeleteSecretPolicy {
                secret: "arn:secret".into()
            }),
            "the previous role may read the secret again before it is restored"
        );
        assert!(matches!(r.get(1), Some(Removal::RestoreFunction { .. })));
        let pos = |x: &Removal| r.iter().position(|y| y == x).expect("present");
        assert!(
            pos(&Removal::WaitInterfacesReleased {
                function: "f".into(),
                group: "sg-l".into()
            }) < pos(&Removal::DeleteSecurityGroup {
                group: Group::Lambda,
                id: "sg-l".into()
            }),
            "LambdaSG goes once Lambda let go of it"
        );
        assert!(
            pos(&Removal::DeleteSecurityGroup {
                group: Group::Database,
                id: "sg-d".into()
            }) < pos(&Removal::DeleteSecurityGroup {
                group: Group::Lambda,
                id: "sg-l".into()
            })
        );
        assert!(matches!(r.last(), Some(Removal::DeleteRole { .. })));
        assert_eq!(plan_remove(&Existing::default()), vec![]);
    }

    #[test]
    fn vpc_access_admits_the_vpc_and_a_shared_endpoint_is_joined_not_duplicated() {
        let mut s = spec();
        s.endpoint_access = EndpointAccess::Vpc;
        let mut o = built(&s);
        let p = plan(&s, &o).expect("plan");
        assert_eq!(
            p,
            vec![Action::AdmitFromVpc {
                port: 443,
                cidrs: vec!["10.0.0.0/16".into()]
            }]
        );
        o.groups
            .get_mut(&Group::SecretsManager)
            .expect("sm")
            .cidr_ingress
            .insert(("tcp".into(), 443, "10.0.0.0/16".into()));
        assert_eq!(plan(&s, &o).expect("plan"), vec![]);
        // Someone else's endpoint with private DNS: joined, never a second one.
        o.endpoint = None;
        o.shared_endpoint = Some(("vpce-theirs".into(), ["sg-theirs".to_string()].into()));
        assert_eq!(
            plan(&s, &o).expect("plan"),
            vec![Action::JoinEndpoint {
                endpoint: "vpce-theirs".into()
            }]
        );
        o.shared_endpoint = Some((
            "vpce-theirs".into(),
            ["sg-theirs".to_string(), "sg-s".to_string()].into(),
        ));
        assert_eq!(plan(&s, &o).expect("plan"), vec![]);
    }

    #[test]
    fn endpoint_policy_admits_the_stack_role_and_the_rotation_function_only() {
        use crate::doctor::iam::{Decision, Request, decide_in, statements};
        let mut s = spec();
        s.rotation_role = Some("arn:aws:iam::123456789012:role/rotator".into());
        let secret = s.secret_arn.clone().expect("secret");
        let get = "secretsmanager:GetSecretValue";
        let ask = |p: &serde_json::Value, who: &str, action: &str, res: &str| {
            decide_in(
                &statements(p),
                action,
                res,
                Some(&Request {
                    principal_arn: who.into(),
                    source_vpce: Some("vpce-1".into()),
                    source_vpc: Some("vpc-1".into()),
                }),
            )
        };
        let p = endpoint_policy(&s).expect("policy");
        let role = s.role_arn();
        assert!(matches!(ask(&p, &role, get, &secret), Decision::Allow(_)));
        assert!(matches!(
            ask(
                &p,
                "arn:aws:iam::123456789012:role/rotator",
                "secretsmanager:PutSecretValue",
                &secret
            ),
            Decision::Allow(_)
        ));
        assert_eq!(
            ask(&p, &role, "secretsmanager:PutSecretValue", &secret),
            Decision::Implicit
        );
        assert_eq!(
            ask(
                &p,
                &role,
                get,
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:other-Xy"
            ),
            Decision::Implicit
        );
        assert_eq!(
            ask(&p, "arn:aws:iam::123456789012:role/other", get, &secret),
            Decision::Implicit
        );
        s.endpoint_policy = EndpointPolicy::Account;
        let p = endpoint_policy(&s).expect("policy");
        assert!(matches!(
            ask(
                &p,
                "arn:aws:iam::123456789012:role/other",
                get,
                "arn:aws:secretsmanager:eu-west-1:123456789012:secret:other-Xy"
            ),
            Decision::Allow(_)
        ));
        assert_eq!(
            ask(&p, "arn:aws:iam::999999999999:role/x", get, &secret),
            Decision::Implicit
        );
        // No secret, no endpoint, no policy.
        s.secret_arn = None;
        assert_eq!(endpoint_policy(&s), None);
    }

    #[test]
    fn secret_policy_denies_reading_to_all_but_the_readers_and_nothing_else() {
        use crate::doctor::iam::{Decision, Request, decide_in, statements};
        let mut s = spec();
        assert_eq!(secret_policy(&s, Some("vpce-1")), None, "only when asked");
        s.secret_policy = Some(SecretPolicy::Endpoint);
        let secret = s.secret_arn.clone().expect("secret");
        let p = secret_policy(&s, Some("vpce-1")).expect("policy");
        // A Deny-only policy, and only of GetSecretValue: admins keep managing it.
        for st in statements(&p) {
            assert_eq!(st["Effect"], "Deny");
            assert_eq!(st["Action"], "secretsmanager:GetSecretValue");
        }
        let ask = |who: &str, vpce: Option<&str>, action: &str| {
            decide_in(
                &statements(&p),
                action,
                &secret,
                Some(&Request {
                    principal_arn: who.into(),
                    source_vpce: vpce.map(str::to_string),
                    source_vpc: None,
                }),
            )
        };
        let role = s.role_arn();
        let get = "secretsmanager:GetSecretValue";
        assert_eq!(ask(&role, Some("vpce-1"), get), Decision::Implicit);
        assert!(matches!(ask(&role, None, get), Decision::Deny(_)));
        assert!(matches!(ask(&role, Some("vpce-2"), get), Decision::Deny(_)));
        let admin = "arn:aws:iam::123456789012:role/Admin";
        assert!(matches!(ask(admin, Some("vpce-1"), get), Decision::Deny(_)));
        for a in [
            "secretsmanager:DeleteResourcePolicy",
            "secretsmanager:PutResourcePolicy",
            "secretsmanager:DescribeSecret",
            "secretsmanager:RotateSecret",
        ] {
            assert_eq!(
                ask(admin, None, a),
                Decision::Implicit,
                "{a} stays with IAM"
            );
        }
    }

    #[test]
    fn secret_policy_is_planned_refused_over_a_foreign_one_and_removed_when_dropped() {
        let mut s = spec();
        s.secret_policy = Some(SecretPolicy::Role);
        let mut o = built(&s);
        assert_eq!(plan(&s, &o).expect("plan"), vec![Action::PutSecretPolicy]);
        o.secret_policy = secret_policy(&s, Some("vpce-1"));
        o.secret_policy_ours = true;
        assert_eq!(plan(&s, &o).expect("plan"), vec![]);
        o.secret_policy_ours = false;
        let e = plan(&s, &o).expect_err("someone else's policy");
        assert!(
            e.to_string().contains("already has a resource policy"),
            "{e}"
        );
        o.secret_policy_ours = true;
        s.secret_policy = None;
        assert_eq!(
            plan(&s, &o).expect("plan"),
            vec![],
            "not named: left as it is"
        );
        s.secret_policy = Some(SecretPolicy::Off);
        assert_eq!(
            plan(&s, &o).expect("plan"),
            vec![Action::DeleteSecretPolicy]
        );
        o.secret_policy_ours = false;
        assert_eq!(plan(&s, &o).expect("plan"), vec![], "never someone else's");
        // The endpoint policy follows the flag.
        let mut s = spec();
        s.endpoint_policy = EndpointPolicy::Account;
        assert_eq!(
            plan(&s, &built(&spec())).expect("plan"),
            vec![Action::SetEndpointPolicy]
        );
    }

    #[test]
    fn a_customer_managed_key_is_granted_through_secrets_manager_only() {
        let mut s = spec();
        assert!(!role_policy(&s).to_string().contains("kms:"));
        s.kms_key = Some("1234abcd-12ab-34cd-56ef-1234567890ab".into());
        let p = role_policy(&s);
        let kms: Vec<&serde_json::Value> = p["Statement"]
            .as_array()
            .expect("statements")
            .iter()
            .filter(|x| x["Action"] == "kms:Decrypt")
            .collect();
        assert_eq!(kms.len(), 1);
        assert_eq!(
            kms[0]["Resource"],
            "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        );
        let cond = &kms[0]["Condition"]["StringEquals"];
        assert_eq!(
            cond["kms:ViaService"],
            "secretsmanager.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            cond["kms:EncryptionContext:SecretARN"],
            s.secret_arn.clone().expect("secret").as_str()
        );
    }
}
