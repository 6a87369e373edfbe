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

/// Default stack name when the config names none.
pub const DEFAULT_STACK: &str = "default";

/// Destination natd owns in the tagged route tables.
pub const DEFAULT_ROUTE: &str = "0.0.0.0/0";

/// The lifecycle transition whose hook natd completes once it forwards.
pub const LAUNCHING_TRANSITION: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";

/// The IAM policy natd needs for stack `stack`, as a JSON policy document.
///
/// Read-only EC2 and Auto Scaling calls do not support resource-level permissions, so
/// they are on `*`. Every mutating call is scoped: routes only in tables tagged
/// `natd:egress=<stack>`, the Elastic IP only when tagged likewise, the Auto Scaling
/// calls only on groups tagged `natd:stack=<stack>`. Source/dest check is an attribute
/// of the instance's own ENI, whose id is not known before launch, so it is scoped to
/// network interfaces in the account.
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
                "Sid": "DisableSourceDestCheck",
                "Effect": "Allow",
                "Action": "ec2:ModifyNetworkInterfaceAttribute",
                "Resource": "arn:aws:ec2:*:*:network-interface/*"
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
                "Sid": "AssociateElasticIpToEni",
                "Effect": "Allow",
                "Action": "ec2:AssociateAddress",
                "Resource": "arn:aws:ec2:*:*:network-interface/*"
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
