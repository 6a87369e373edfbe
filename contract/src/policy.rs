//! natd's IAM policy: what natctl grants the instance profile, and what the
//! least-privilege test runs natd with, so what natctl grants is what natd is proven to
//! need.

use crate::tags::{EGRESS_TAG, HEALTH_TAG, STACK_TAG};
use serde_json::{Value, json};

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
    agent_policy_with_tables(stack, &[])
}

/// [`agent_policy`], and routes in `tables` by id: the route tables a boot
/// configuration names ([`crate::boot::BootConfig::route_tables`]), for a stack made by
/// a template that cannot tag the tables it hands over.
pub fn agent_policy_with_tables(stack: &str, tables: &[String]) -> Value {
    let mut policy = json!({
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
                // PutMetricData takes no resource (Service Authorization Reference,
                // CloudWatch): it is scoped by the namespace natd publishes in.
                "Sid": "PublishMetricsInNatdNamespace",
                "Effect": "Allow",
                "Action": "cloudwatch:PutMetricData",
                "Resource": "*",
                "Condition": {"StringEquals": {"cloudwatch:namespace": crate::metrics::NAMESPACE}}
            },
            {
                "Sid": "ReportToOwnGroup",
                "Effect": "Allow",
                "Action": ["autoscaling:CompleteLifecycleAction", "autoscaling:SetInstanceHealth"],
                "Resource": "arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/*",
                "Condition": {"StringEquals": {format!("autoscaling:ResourceTag/{STACK_TAG}"): stack}}
            }
        ]
    });
    if !tables.is_empty() {
        let arns: Vec<String> = tables.iter().map(|t| route_table_arn(t)).collect();
        let named = json!({
            "Sid": "TakeOverNamedRoutes",
            "Effect": "Allow",
            "Action": ["ec2:ReplaceRoute", "ec2:CreateRoute"],
            "Resource": arns
        });
        // Beside the tagged tables' statement (the list is built above as an array).
        if let Some(list) = policy["Statement"].as_array_mut() {
            let at = list
                .iter()
                .position(|s| s["Sid"] == "TakeOverTaggedRoutes")
                .map_or(list.len(), |i| i + 1);
            list.insert(at, named);
        }
    }
    policy
}

/// The ARN of route table `id` in any region and account of the partition `aws` (the
/// policy's other statements name resources alike).
pub fn route_table_arn(id: &str) -> String {
    format!("arn:aws:ec2:*:*:route-table/{id}")
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
            if actions == ["cloudwatch:PutMetricData"] {
                assert_eq!(
                    s["Condition"]["StringEquals"]["cloudwatch:namespace"], "natd",
                    "{s}"
                );
                continue;
            }
            assert_ne!(s["Resource"], "*", "mutating statement on *: {s}");
            for a in &actions {
                assert!(!a.ends_with('*'), "wildcard action {a}");
            }
            if s["Sid"] == "TakeOverNamedRoutes" {
                continue;
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

    #[test]
    fn named_tables_are_granted_by_arn_and_nothing_else_changes() {
        assert_eq!(agent_policy_with_tables("dev1", &[]), agent_policy("dev1"));
        let tables = ["rtb-1234abcd".to_string()];
        let p = agent_policy_with_tables("dev1", &tables);
        let s = p["Statement"].as_array().expect("statements");
        let named: Vec<_> = s
            .iter()
            .filter(|s| s["Sid"] == "TakeOverNamedRoutes")
            .collect();
        assert_eq!(named.len(), 1);
        assert_eq!(
            named[0]["Resource"],
            json!(["arn:aws:ec2:*:*:route-table/rtb-1234abcd"])
        );
        let others: Vec<_> = s
            .iter()
            .filter(|s| s["Sid"] != "TakeOverNamedRoutes")
            .cloned()
            .collect();
        assert_eq!(json!(others), agent_policy("dev1")["Statement"]);
    }
}
