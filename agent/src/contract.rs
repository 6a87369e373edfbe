//! The contract between `natctl` and `natd`: tag names and the IAM policy the agent
//! needs. Both binaries use this module, and the least-privilege test runs the agent
//! with exactly [`agent_policy`], so what natctl grants is what natd is proven to need.

use serde_json::{Value, json};

/// Tag on resources natd takes over (route tables, an Elastic IP). Its value is the
/// stack name, so several stacks can share a VPC without touching each other's tables.
pub const EGRESS_TAG: &str = "natd:egress";

/// Tag natctl puts on everything it creates, value = stack name. natd never deletes
/// anything; natctl's teardown deletes exactly what carries this tag.
pub const STACK_TAG: &str = "natd:stack";

/// Tag `natctl rotate` puts on the holder of a hot standby pair to ask it to hand over
/// to the standby (its value: when it was asked); natd only reads it.
pub const HANDOVER_TAG: &str = "natd:handover";

/// Tag natd writes on its own instance: its health summary, read by `natctl status`
/// (`data=ok control=ok routes=1 at=2026-11-25T10:00:00Z`, see `natd::agent`).
pub const HEALTH_TAG: &str = "natd:health";

/// natd rewrites [`HEALTH_TAG`] when its summary changes and at least this often, so a
/// reader can tell a silent natd (stopped, or cut off from EC2) from a quiet one: a
/// report older than twice this is stale.
pub const HEALTH_TAG_REFRESH_SECS: u64 = 300;

/// Default stack name when the config names none.
pub const DEFAULT_STACK: &str = "default";

/// Longest stack name. Every name derived from a stack must fit AWS's limits; the
/// tightest is an IAM role name (64 characters): `natd-` + stack + the longest suffix
/// natctl derives (`-flow-logs`, 10 characters) leaves 49, and 32 leaves room for
/// suffixes to come. Security group, launch template and Auto Scaling group names
/// (128-255) and tag values (256) are looser.
pub const STACK_MAX_LEN: usize = 32;

/// A stack name that breaks [`check_stack_name`]'s rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "stack name {name:?}: {why} (the rule: 1 to {STACK_MAX_LEN} lowercase letters, digits and '-', not starting or ending with '-')"
)]
pub struct BadStackName {
    /// The name given.
    pub name: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// The stack-name rule both binaries apply: lowercase letters, digits and `-`, at most
/// [`STACK_MAX_LEN`] characters, not starting or ending with `-`. Lowercase only,
/// because IAM names are unique regardless of case: stacks `Dev` and `dev` would share
/// one role.
pub fn check_stack_name(name: &str) -> Result<(), BadStackName> {
    let bad = |why| {
        Err(BadStackName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.chars().count() > STACK_MAX_LEN {
        return bad("it is too long");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return bad("it has a character outside the rule");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("it starts or ends with '-'");
    }
    Ok(())
}

/// Destination natd owns in the tagged route tables.
pub const DEFAULT_ROUTE: &str = "0.0.0.0/0";

/// The lifecycle transition whose hook natd completes once it forwards.
pub const LAUNCHING_TRANSITION: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";

/// The IAM policy natd needs for stack `stack`, as a JSON policy document.
///
/// Read-only EC2 and Auto Scaling calls do not support resource-level permissions, so
/// they are on `*`. Every mutating call is scoped: routes only in tables tagged
/// `natd:egress=<stack>`, the Elastic IP only when tagged likewise, the Auto Scaling
/// calls only on groups tagged `natd:stack=<stack>`, and the network-interface calls
/// (source/dest check, the ENI side of associating the Elastic IP) only on ENIs tagged
/// `natd:stack=<stack>`: the launch template tags the NAT instance's ENI at launch, so a
/// compromised NAT instance cannot change any other ENI of the account. A hot standby
/// pair moves its egress addresses (secondary private IPs) between its two ENIs, tagged
/// alike.
pub fn agent_policy(stack: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadTopology",
                "Effect": "Allow",
                "Action": [
                    "ec2:DescribeRouteTables",
                    "ec2:DescribeNetworkInterfaces",
                    "ec2:DescribeNetworkInterfaceAttribute",
                    "ec2:DescribeInstances",
                    "ec2:DescribeAddresses",
                    "autoscaling:DescribeAutoScalingInstances",
                    "autoscaling:DescribeLifecycleHooks"
                ],
                "Resource": "*"
            },
            {
                "Sid": "DisableSourceDestCheckOfOwnEni",
                "Effect": "Allow",
                "Action": "ec2:ModifyNetworkInterfaceAttribute",
                "Resource": "arn:aws:ec2:*:*:network-interface/*",
                "Condition": {"StringEquals": {format!("ec2:ResourceTag/{STACK_TAG}"): stack}}
            },
            {
                "Sid": "TakeOverTaggedRoutes",
                "Effect": "Allow",
                "Action": ["ec2:ReplaceRoute", "ec2:CreateRoute"],
                "Resource": "arn:aws:ec2:*:*:route-table/*",
                "Condition": {"StringEquals": {format!("ec2:ResourceTag/{EGRESS_TAG}"): stack}}
            },
            {
                "Sid": "MoveTaggedElasticIp",
                "Effect": "Allow",
                "Action": "ec2:AssociateAddress",
                "Resource": "arn:aws:ec2:*:*:elastic-ip/*",
                "Condition": {"StringEquals": {format!("ec2:ResourceTag/{EGRESS_TAG}"): stack}}
            },
            {
                "Sid": "AssociateElasticIpToOwnEni",
                "Effect": "Allow",
                "Action": "ec2:AssociateAddress",
                "Resource": "arn:aws:ec2:*:*:network-interface/*",
                "Condition": {"StringEquals": {format!("ec2:ResourceTag/{STACK_TAG}"): stack}}
            },
            {
                "Sid": "MoveEgressAddressesBetweenOwnEnis",
                "Effect": "Allow",
                "Action": ["ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses"],
                "Resource": "arn:aws:ec2:*:*:network-interface/*",
                "Condition": {"StringEquals": {format!("ec2:ResourceTag/{STACK_TAG}"): stack}}
            },
            {
                "Sid": "PublishHealthOnOwnInstance",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": "arn:aws:ec2:*:*:instance/*",
                "Condition": {
                    "StringEquals": {format!("ec2:ResourceTag/{STACK_TAG}"): stack},
                    "ForAllValues:StringEquals": {"aws:TagKeys": [HEALTH_TAG]}
                }
            },
            {
                "Sid": "ReportToOwnGroup",
                "Effect": "Allow",
                "Action": ["autoscaling:CompleteLifecycleAction", "autoscaling:SetInstanceHealth"],
                "Resource": "arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/*",
                "Condition": {"StringEquals": {format!("autoscaling:ResourceTag/{STACK_TAG}"): stack}}
            }
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_names_follow_one_rule() {
        for good in ["dev", "dev1", "a", "my-app-2", &"a".repeat(STACK_MAX_LEN)] {
            assert_eq!(check_stack_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "dev one",
            "Dev",
            "dev_1",
            "-dev",
            "dev-",
            "d\u{e9}v",
            &"a".repeat(STACK_MAX_LEN + 1),
        ] {
            let e = check_stack_name(bad).expect_err(bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        // The longest role natctl derives still fits IAM's 64 characters.
        assert!("natd-".len() + STACK_MAX_LEN + "-flow-logs".len() <= 64);
    }

    #[test]
    fn mutating_actions_are_scoped_by_tag_to_the_stack() {
        let policy = agent_policy("dev1");
        let statements = policy["Statement"].as_array().expect("statements");
        for s in statements {
            let actions: Vec<&str> = match &s["Action"] {
                Value::String(a) => vec![a.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                other => panic!("unexpected Action {other}"),
            };
            let read_only = actions.iter().all(|a| a.contains(":Describe"));
            if read_only {
                continue;
            }
            assert_ne!(s["Resource"], "*", "mutating statement on *: {s}");
            for a in &actions {
                assert!(!a.ends_with('*'), "wildcard action {a}");
            }
            if actions
                .iter()
                .any(|a| a.contains("Route") || a.contains("Lifecycle"))
            {
                let cond = s["Condition"]["StringEquals"]
                    .as_object()
                    .expect("condition");
                assert!(cond.values().all(|v| v == "dev1"), "{s}");
            }
        }
    }
}
