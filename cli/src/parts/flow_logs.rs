//! VPC Flow Logs for the stack's VPC: every accepted and rejected flow, to a
//! CloudWatch Logs group with a retention (delivered by a role that may write to that
//! group alone), or to an S3 bucket the user names. Teardown removes the flow log, and
//! the log group and role setup made.
//!
//! Owns: [`Spec`], [`Observed`], [`Action`], the pure [`plan`], [`read`], [`apply`];
//! [`Existing`], the pure [`plan_remove`] and [`remove`].

use super::Progress;
use crate::aws::names::{STACK_TAG, ec2_tags, iam_tags};
use crate::aws::read;
use crate::aws::{Clients, Error, err, found};
use serde::Serialize;

/// The retentions CloudWatch Logs accepts, in days (PutRetentionPolicy).
pub const RETENTIONS: [u32; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// Where the flow records go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "to", rename_all = "snake_case")]
pub enum Destination {
    /// The stack's log group, kept this many days.
    CloudWatch {
        /// Days.
        retention_days: u32,
    },
    /// An S3 bucket (and prefix): `arn:aws:s3:::BUCKET[/PREFIX]`.
    S3 {
        /// The ARN.
        arn: String,
    },
}

/// Parses `--flow-logs`: `cloudwatch`, or `s3://BUCKET[/PREFIX]`.
pub fn parse_destination(s: &str, retention_days: u32) -> Result<Destination, String> {
    if !RETENTIONS.contains(&retention_days) {
        return Err(format!(
            "--flow-logs-retention {retention_days}: CloudWatch Logs keeps logs for one of {} days",
            RETENTIONS
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if s == "cloudwatch" {
        return Ok(Destination::CloudWatch { retention_days });
    }
    let Some(rest) = s.strip_prefix("s3://") else {
        return Err(format!(
            "--flow-logs {s:?}: expected cloudwatch, s3://BUCKET[/PREFIX] or off"
        ));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if !bucket_ok {
        return Err(format!(
            "--flow-logs {s:?}: {bucket:?} is not an S3 bucket name (3-63 lowercase letters, digits, '-' and '.')"
        ));
    }
    if prefix.starts_with("AWSLogs") {
        return Err(format!(
            "--flow-logs {s:?}: the prefix may not start with AWSLogs (AWS adds it)"
        ));
    }
    let prefix = prefix.trim_end_matches('/');
    Ok(Destination::S3 {
        arn: if prefix.is_empty() {
            format!("arn:aws:s3:::{bucket}")
        } else {
            format!("arn:aws:s3:::{bucket}/{prefix}")
        },
    })
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spec {
    /// Stack name.
    pub stack: String,
    /// The VPC.
    pub vpc: String,
    /// Region (for ARNs).
    pub region: String,
    /// Account (for ARNs).
    pub account: String,
    /// Where the records go.
    pub destination: Destination,
}

/// The stack's log group.
pub fn log_group(stack: &str) -> String {
    format!("/natd/{stack}/vpc-flow-logs")
}

/// The delivery role.
pub fn role(stack: &str) -> String {
    crate::aws::names::Names(stack).flow_logs()
}

impl Spec {
    /// The log group's ARN (as IAM names it; its streams are `ARN:*`).
    pub fn log_group_arn(&self) -> String {
        format!(
            "arn:aws:logs:{}:{}:log-group:{}",
            self.region,
            self.account,
            log_group(&self.stack)
        )
    }
}

/// Who may assume the delivery role: the flow logs service, for this account's flow
/// logs only (AWS's advice against the confused deputy).
pub fn trust_policy(spec: &Spec) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "vpc-flow-logs.amazonaws.com"},
            "Action": "sts:AssumeRole",
            "Condition": {
                "StringEquals": {"aws:SourceAccount": spec.account},
                "ArnLike": {"aws:SourceArn": format!("arn:aws:ec2:{}:{}:vpc-flow-log/*", spec.region, spec.account)}
            }
        }]
    })
}

/// What the delivery role may do: write streams of the stack's log group, and list log
/// groups (an action that takes no resource), nothing else.
pub fn role_policy(spec: &Spec) -> serde_json::Value {
    let group = spec.log_group_arn();
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "StackFlowLogGroup",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            "Resource": [group.clone(), format!("{group}:*")]
        }, {
            // DescribeLogGroups supports no resource ARN (Service Authorization
            // Reference, CloudWatch Logs): granted on one group it is never allowed.
            "Sid": "DescribeLogGroups",
            "Effect": "Allow",
            "Action": ["logs:DescribeLogGroups"],
            "Resource": "*"
        }]
    })
}

/// The stack's flow log as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowLogObs {
    /// `fl-...`
    pub id: String,
    /// Where it delivers: the log group name, or the S3 ARN.
    pub destination: String,
}

/// What exists now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The stack's flow logs on the VPC.
    pub flow_logs: Vec<FlowLogObs>,
    /// The stack's log group, with its retention.
    pub log_group: Option<Option<u32>>,
    /// The delivery role's ARN.
    pub role: Option<String>,
    /// Its inline policy.
    pub role_policy: Option<serde_json::Value>,
    /// Same-named resources without the stack's tag.
    pub foreign: Vec<(&'static str, String)>,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Create the log group.
    CreateLogGroup,
    /// Set its retention.
    SetRetention {
        /// Days.
        days: u32,
    },
    /// Create the delivery role.
    CreateRole,
    /// Put its policy.
    PutRolePolicy,
    /// Delete a flow log of the stack that delivers elsewhere (the destination changed).
    DeleteFlowLog {
        /// `fl-...`
        id: String,
    },
    /// Create the flow log on the VPC.
    CreateFlowLog,
}

/// The changes that turn `o` into `spec`.
pub fn plan(spec: &Spec, o: &Observed) -> Result<Vec<Action>, super::Foreign> {
    if let Some(f) = super::Foreign::first(&o.foreign, &spec.stack) {
        return Err(f);
    }
    let mut out = Vec::new();
    let want = match &spec.destination {
        Destination::CloudWatch { retention_days } => {
            match o.log_group {
                None => {
                    out.push(Action::CreateLogGroup);
                    out.push(Action::SetRetention {
                        days: *retention_days,
                    });
                }
                Some(r) if r != Some(*retention_days) => out.push(Action::SetRetention {
                    days: *retention_days,
                }),
                Some(_) => {}
            }
            if o.role.is_none() {
                out.push(Action::CreateRole);
            }
            if o.role_policy.as_ref() != Some(&role_policy(spec)) {
                out.push(Action::PutRolePolicy);
            }
            log_group(&spec.stack)
        }
        Destination::S3 { arn } => arn.clone(),
    };
    for f in &o.flow_logs {
        if f.destination != want {
            out.push(Action::DeleteFlowLog { id: f.id.clone() });
        }
    }
    if !o.flow_logs.iter().any(|f| f.destination == want) {
        out.push(Action::CreateFlowLog);
    }
    Ok(out)
}

/// The stack's flow logs (on any resource).
async fn stack_flow_logs(c: &Clients, stack: &str) -> Result<Vec<FlowLogObs>, Error> {
    let r = c
        .ec2
        .describe_flow_logs()
        .filter(crate::aws::names::stack_filter(stack))
        .send()
        .await
        .map_err(err("DescribeFlowLogs", stack))?;
    Ok(r.flow_logs()
        .iter()
        .map(|f| FlowLogObs {
            id: f.flow_log_id().unwrap_or_default().to_string(),
            destination: f
                .log_group_name()
                .or(f.log_destination())
                .unwrap_or_default()
                .to_string(),
        })
        .collect())
}

/// The stack's log group: `Some(retention)` when it exists and is the stack's; a
/// foreign one is reported in `foreign`.
async fn stack_log_group(
    c: &Clients,
    stack: &str,
    foreign: &mut Vec<(&'static str, String)>,
) -> Result<Option<Option<u32>>, Error> {
    let name = log_group(stack);
    let r = c
        .logs
        .describe_log_groups()
        .log_group_name_prefix(&name)
        .send()
        .await
        .map_err(err("DescribeLogGroups", &name))?;
    let Some(g) = r
        .log_groups()
        .iter()
        .find(|g| g.log_group_name() == Some(name.as_str()))
    else {
        return Ok(None);
    };
    let tags = c
        .logs
        .list_tags_for_resource()
        .resource_arn(g.arn().unwrap_or_default().trim_end_matches(":*"))
        .send()
        .await
        .map_err(err("ListTagsForResource", &name))?;
    let ours = tags
        .tags()
        .and_then(|t| t.get(STACK_TAG))
        .is_some_and(|v| v == stack);
    if !ours {
        foreign.push(("log group", name));
        return Ok(None);
    }
    Ok(Some(
        g.retention_in_days().and_then(|d| u32::try_from(d).ok()),
    ))
}

/// Reads what exists.
pub async fn read(c: &Clients, spec: &Spec) -> Result<Observed, Error> {
    let mut o = Observed {
        flow_logs: stack_flow_logs(c, &spec.stack).await?,
        ..Observed::default()
    };
    o.log_group = stack_log_group(c, &spec.stack, &mut o.foreign).await?;
    let name = role(&spec.stack);
    if let Some((arn, tags)) = read::role(c, &name).await? {
        if tags.get(STACK_TAG) == Some(&spec.stack) {
            o.role = Some(arn);
            o.role_policy = read::role_policy(c, &name, &name).await?;
        } else {
            o.foreign.push(("IAM role", name));
        }
    }
    Ok(o)
}

/// Carries out `actions` in order.
pub async fn apply(
    c: &Clients,
    spec: &Spec,
    o: &Observed,
    actions: &[Action],
    progress: Progress<'_>,
) -> Result<(), Error> {
    use aws_sdk_ec2::types::{FlowLogsResourceType, LogDestinationType, ResourceType, TrafficType};
    let group = log_group(&spec.stack);
    let name = role(&spec.stack);
    let mut role_arn = o.role.clone();
    for a in actions {
        match a {
            Action::CreateLogGroup => {
                let mut req = c
                    .logs
                    .create_log_group()
                    .log_group_name(&group)
                    .tags(STACK_TAG, &spec.stack);
                for (k, v) in crate::aws::names::extra_tags() {
                    req = req.tags(k, v);
                }
                let r = req.send().await;
                // A concurrent run may have made it a moment ago: then it is there.
                if let Err(e) = r {
                    let e = crate::aws::ApiFailure::from(e);
                    if !e.is("ResourceAlreadyExistsException") {
                        return Err(Error::Call {
                            op: "CreateLogGroup",
                            target: group.clone(),
                            source: e,
                        });
                    }
                }
            }
            Action::SetRetention { days } => {
                c.logs
                    .put_retention_policy()
                    .log_group_name(&group)
                    .retention_in_days(i32::try_from(*days).unwrap_or(90))
                    .send()
                    .await
                    .map_err(err("PutRetentionPolicy", &group))?;
            }
            Action::CreateRole => {
                let r = c
                    .iam
                    .create_role()
                    .role_name(&name)
                    .description(format!(
                        "natd stack {}: delivers the VPC's flow logs to {group}",
                        spec.stack
                    ))
                    .assume_role_policy_document(trust_policy(spec).to_string())
                    .set_tags(Some(iam_tags("CreateRole", &name, &spec.stack, &[])?))
                    .send()
                    .await
                    .map_err(err("CreateRole", &name))?;
                role_arn = r.role().map(|r| r.arn().to_string());
            }
            Action::PutRolePolicy => {
                c.iam
                    .put_role_policy()
                    .role_name(&name)
                    .policy_name(&name)
                    .policy_document(role_policy(spec).to_string())
                    .send()
                    .await
                    .map_err(err("PutRolePolicy", &name))?;
            }
            Action::DeleteFlowLog { id } => {
                c.ec2
                    .delete_flow_logs()
                    .flow_log_ids(id)
                    .send()
                    .await
                    .map_err(err("DeleteFlowLogs", id))?;
            }
            Action::CreateFlowLog => {
                let mut req = c
                    .ec2
                    .create_flow_logs()
                    .resource_type(FlowLogsResourceType::Vpc)
                    .resource_ids(&spec.vpc)
                    .traffic_type(TrafficType::All)
                    .max_aggregation_interval(60)
                    .tag_specifications(ec2_tags(
                        ResourceType::VpcFlowLog,
                        &spec.stack,
                        &role(&spec.stack),
                        &[],
                    ));
                req = match &spec.destination {
                    Destination::CloudWatch { .. } => req
                        .log_destination_type(LogDestinationType::CloudWatchLogs)
                        .log_group_name(&group)
                        .deliver_logs_permission_arn(role_arn.clone().unwrap_or_default()),
                    Destination::S3 { arn } => req
                        .log_destination_type(LogDestinationType::S3)
                        .log_destination(arn),
                };
                progress(&format!("flow logs of {} to {}", spec.vpc, {
                    match &spec.destination {
                        Destination::CloudWatch { .. } => group.clone(),
                        Destination::S3 { arn } => arn.clone(),
                    }
                }));
                let r = req.send().await.map_err(err("CreateFlowLogs", &spec.vpc))?;
                if let Some(u) = r.unsuccessful().first() {
                    let why = u
                        .error()
                        .and_then(|e| e.message())
                        .unwrap_or("refused")
                        .to_string();
                    return Err(Error::Call {
                        op: "CreateFlowLogs",
                        target: spec.vpc.clone(),
                        source: crate::aws::ApiFailure {
                            code: u.error().and_then(|e| e.code()).map(str::to_string),
                            message: why,
                            timed_out: false,
                        },
                    });
                }
            }
        }
    }
    Ok(())
}

/// What exists of the part, for its removal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    /// The stack's flow logs.
    pub flow_logs: Vec<String>,
    /// The stack's log group.
    pub log_group: Option<String>,
    /// The delivery role.
    pub role: Option<String>,
}

/// One removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Removal {
    /// Delete a flow log.
    FlowLog {
        /// `fl-...`
        id: String,
    },
    /// Delete the log group (and the records in it).
    LogGroup {
        /// Its name.
        name: String,
    },
    /// Delete the delivery role.
    Role {
        /// Its name.
        name: String,
    },
}

/// Reads what exists of the stack's part.
pub async fn read_existing(c: &Clients, stack: &str) -> Result<Existing, Error> {
    let mut foreign = Vec::new();
    let group = stack_log_group(c, stack, &mut foreign).await?;
    let name = role(stack);
    let role = read::role(c, &name)
        .await?
        .filter(|(_, tags)| tags.get(STACK_TAG).map(String::as_str) == Some(stack))
        .map(|_| name);
    Ok(Existing {
        flow_logs: stack_flow_logs(c, stack)
            .await?
            .into_iter()
            .map(|f| f.id)
            .collect(),
        log_group: group.map(|_| log_group(stack)),
        role,
    })
}

/// The removals that take `e` away: the flow logs first (they use the role and the
/// group), then the group and the role.
pub fn plan_remove(e: &Existing) -> Vec<Removal> {
    let mut out: Vec<Removal> = e
        .flow_logs
        .iter()
        .map(|id| Removal::FlowLog { id: id.clone() })
        .collect();
    if let Some(name) = &e.log_group {
        out.push(Removal::LogGroup { name: name.clone() });
    }
    if let Some(name) = &e.role {
        out.push(Removal::Role { name: name.clone() });
    }
    out
}

/// Carries out `removals` in order.
pub async fn remove(
    c: &Clients,
    removals: &[Removal],
    _progress: Progress<'_>,
) -> Result<(), Error> {
    for r in removals {
        match r {
            Removal::FlowLog { id } => {
                let r = c.ec2.delete_flow_logs().flow_log_ids(id).send().await;
                found(r, "DeleteFlowLogs", id)?;
            }
            Removal::LogGroup { name } => {
                let r = c.logs.delete_log_group().log_group_name(name).send().await;
                found(r, "DeleteLogGroup", name)?;
            }
            Removal::Role { name } => read::delete_role(c, name).await?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(destination: Destination) -> Spec {
        Spec {
            stack: "s".into(),
            vpc: "vpc-1".into(),
            region: "eu-west-1".into(),
            account: "123456789012".into(),
            destination,
        }
    }

    #[test]
    fn destinations_and_retentions_are_checked() {
        assert_eq!(
            parse_destination("cloudwatch", 30),
            Ok(Destination::CloudWatch { retention_days: 30 })
        );
        assert_eq!(
            parse_destination("s3://my-logs/vpc/", 30),
            Ok(Destination::S3 {
                arn: "arn:aws:s3:::my-logs/vpc".into()
            })
        );
        assert_eq!(
            parse_destination("s3://my-logs", 30),
            Ok(Destination::S3 {
                arn: "arn:aws:s3:::my-logs".into()
            })
        );
        for (bad, days, needle) in [
            ("cloudwatch", 31, "31"),
            ("s3://My_Bucket", 30, "My_Bucket"),
            ("s3://ab", 30, "\"ab\""),
            ("s3://logs/AWSLogs/x", 30, "AWSLogs"),
            ("kinesis", 30, "kinesis"),
        ] {
            let e = parse_destination(bad, days).expect_err(bad);
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn the_role_writes_the_stack_group_only_and_only_flow_logs_assume_it() {
        let s = spec(Destination::CloudWatch { retention_days: 90 });
        let p = role_policy(&s).to_string();
        assert!(p.contains("log-group:/natd/s/vpc-flow-logs\""));
        assert!(p.contains("log-group:/natd/s/vpc-flow-logs:*\""));
        // Only DescribeLogGroups, which takes no resource, is granted on "*".
        let v = role_policy(&s);
        for st in v["Statement"].as_array().expect("statements") {
            if st["Resource"] == "*" {
                assert_eq!(st["Action"], serde_json::json!(["logs:DescribeLogGroups"]));
            } else {
                assert!(
                    !st["Action"].to_string().contains("DescribeLogGroups"),
                    "{st}"
                );
            }
        }
        let t = trust_policy(&s).to_string();
        assert!(t.contains("vpc-flow-logs.amazonaws.com"));
        assert!(t.contains("aws:SourceAccount"));
    }

    #[test]
    fn plan_builds_converges_and_follows_a_new_destination() {
        let s = spec(Destination::CloudWatch { retention_days: 90 });
        assert_eq!(
            plan(&s, &Observed::default()).expect("plan"),
            vec![
                Action::CreateLogGroup,
                Action::SetRetention { days: 90 },
                Action::CreateRole,
                Action::PutRolePolicy,
                Action::CreateFlowLog
            ]
        );
        let built = Observed {
            flow_logs: vec![FlowLogObs {
                id: "fl-1".into(),
                destination: log_group("s"),
            }],
            log_group: Some(Some(90)),
            role: Some("arn:aws:iam::123456789012:role/natd-s-flow-logs".into()),
            role_policy: Some(role_policy(&s)),
            foreign: vec![],
        };
        assert_eq!(plan(&s, &built).expect("plan"), vec![]);
        let longer = spec(Destination::CloudWatch {
            retention_days: 365,
        });
        assert_eq!(
            plan(&longer, &built).expect("plan"),
            vec![Action::SetRetention { days: 365 }]
        );
        let s3 = spec(Destination::S3 {
            arn: "arn:aws:s3:::b".into(),
        });
        assert_eq!(
            plan(&s3, &built).expect("plan"),
            vec![
                Action::DeleteFlowLog { id: "fl-1".into() },
                Action::CreateFlowLog
            ]
        );
        let mut theirs = Observed::default();
        theirs.foreign.push(("log group", log_group("s")));
        assert!(plan(&s, &theirs).is_err());
    }

    #[test]
    fn removal_deletes_the_flow_log_before_what_it_uses() {
        let e = Existing {
            flow_logs: vec!["fl-1".into()],
            log_group: Some(log_group("s")),
            role: Some(role("s")),
        };
        assert_eq!(
            plan_remove(&e),
            vec![
                Removal::FlowLog { id: "fl-1".into() },
                Removal::LogGroup {
                    name: log_group("s")
                },
                Removal::Role { name: role("s") }
            ]
        );
        assert_eq!(plan_remove(&Existing::default()), vec![]);
    }
}
