//! `natctl export --format cloudformation`: the stack setup would build, as a
//! CloudFormation template, for teams that manage their infrastructure as code (and for
//! Terraform's `aws_cloudformation_stack`).
//!
//! Built from the same request setup builds (the same topology reading, the same specs)
//! and from the contract crate: the names, the tags, natd's policy, the boot
//! configuration, the pair's ports, the alarms. Pure: a request in, a template out.
//!
//! One difference from setup, by necessity: a template cannot tag route tables it does
//! not own, so natd's boot configuration names the private tables (`route_tables`) and
//! natd's policy grants route changes in exactly those tables by ARN. natd takes over
//! tables tagged for its stack and tables its boot configuration names alike; status
//! and doctor read both.

use crate::parts::alarms;
use crate::parts::nat_gateways::{self, Mode};
use crate::parts::nat_instance::{self, HOOK, HOOK_TIMEOUT_SECS, MAX_HEALTHY, MIN_HEALTHY};
use crate::stack::{Egress, FlowLogs, Request};
use natd_contract::{
    DEFAULT_ROUTE, EGRESS_TAG, LAUNCHING_TRANSITION, NAME_TAG, Names, STACK_TAG,
    agent_policy_with_tables,
};
use serde_json::{Map, Value, json};

/// A part of the request the template cannot express yet, named for the error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "natctl export does not write {0} into a template yet: leave it out of the export (and add it with natctl setup, or by hand)"
)]
pub struct Unsupported(pub &'static str);

/// Tags as CloudFormation takes them: the stack's, `Name`, `extra`, and `--tag`.
fn tags(stack: &str, name: &str, extra: &[(&str, &str)]) -> Value {
    let mut out = vec![
        json!({"Key": STACK_TAG, "Value": stack}),
        json!({"Key": NAME_TAG, "Value": name}),
    ];
    out.extend(extra.iter().map(|(k, v)| json!({"Key": k, "Value": v})));
    out.extend(
        crate::aws::names::extra_tags()
            .iter()
            .map(|(k, v)| json!({"Key": k, "Value": v})),
    );
    Value::Array(out)
}

/// A logical id from a resource's name: CloudFormation allows letters and digits only.
fn logical(prefix: &str, name: &str) -> String {
    let mut out = prefix.to_string();
    let mut upper = true;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(if upper { c.to_ascii_uppercase() } else { c });
            upper = false;
        } else {
            upper = true;
        }
    }
    out
}

/// The template of `req`.
pub fn cloudformation(req: &Request) -> Result<Value, Unsupported> {
    if req.lambda.is_some() {
        return Err(Unsupported("the Lambda wiring (--lambda)"));
    }
    if req.ipv6.is_some() {
        return Err(Unsupported("IPv6 egress (--ipv6)"));
    }
    if !matches!(req.flow_logs, FlowLogs::Leave) {
        return Err(Unsupported("flow logs (--flow-logs)"));
    }
    let mut resources = Map::new();
    let mut outputs = Map::new();
    let description = match &req.egress {
        Egress::Dev(spec) => {
            instance(spec, &mut resources, &mut outputs);
            if let Some(a) = &req.alarms {
                alarm_resources(a, &mut resources);
            }
            match &spec.pair {
                Some(_) => format!(
                    "natd stack {}: a hot standby pair of NAT instances (natctl setup --env dev --ha)",
                    req.stack
                ),
                None => format!(
                    "natd stack {}: a self-healing NAT instance (natctl setup --env dev)",
                    req.stack
                ),
            }
        }
        Egress::Prod(spec) => {
            if spec.azs.values().flat_map(|z| &z.private).any(|s| s.shared) {
                return Err(Unsupported(
                    "a route table shared by private subnets of several AZs (setup splits it into one table per AZ; a template routes tables in place)",
                ));
            }
            if spec.mode == Mode::Regional {
                regional(spec, &mut resources, &mut outputs);
                format!(
                    "natd stack {}: a regional NAT gateway (natctl setup --env prod --gateway regional)",
                    req.stack
                )
            } else {
                zonal(spec, &mut resources, &mut outputs);
                format!(
                    "natd stack {}: a NAT gateway per AZ with AZ-local routes (natctl setup --env prod)",
                    req.stack
                )
            }
        }
    };
    Ok(json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": description,
        "Resources": resources,
        "Outputs": outputs,
    }))
}

/// A dev stack: natd's instance (or pair), as setup builds it.
fn instance(spec: &nat_instance::Spec, r: &mut Map<String, Value>, out: &mut Map<String, Value>) {
    let names = Names(&spec.stack);
    let name = names.nat();
    let tables: Vec<String> = spec.private_tables.iter().cloned().collect();
    let mut ingress: Vec<Value> = spec
        .private_cidrs
        .iter()
        .map(|c| json!({"IpProtocol": "-1", "CidrIp": c, "Description": "private subnet"}))
        .collect();
    ingress.sort_by_key(|v| v["CidrIp"].to_string());
    r.insert(
        "NatSecurityGroup".into(),
        json!({
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupName": name,
                "GroupDescription": format!("natd NAT instance of stack {}: admits the private subnets", spec.stack),
                "VpcId": spec.vpc,
                "SecurityGroupIngress": ingress,
                "Tags": tags(&spec.stack, &name, &[]),
            }
        }),
    );
    if spec.pair.is_some() {
        for (port, what) in nat_instance::PAIR_PORTS {
            r.insert(
                format!("PairIngress{port}"),
                json!({
                    "Type": "AWS::EC2::SecurityGroupIngress",
                    "Properties": {
                        "GroupId": {"Fn::GetAtt": ["NatSecurityGroup", "GroupId"]},
                        "IpProtocol": "udp",
                        "FromPort": port,
                        "ToPort": port,
                        "SourceSecurityGroupId": {"Fn::GetAtt": ["NatSecurityGroup", "GroupId"]},
                        "Description": what,
                    }
                }),
            );
        }
    }
    r.insert(
        "NatRole".into(),
        json!({
            "Type": "AWS::IAM::Role",
            "Properties": {
                "RoleName": name,
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]
                },
                "Policies": [{
                    "PolicyName": name,
                    "PolicyDocument": agent_policy_with_tables(&spec.stack, &tables),
                }],
                "Tags": tags(&spec.stack, &name, &[]),
            }
        }),
    );
    r.insert(
        "NatInstanceProfile".into(),
        json!({
            "Type": "AWS::IAM::InstanceProfile",
            "Properties": {"InstanceProfileName": name, "Roles": [{"Ref": "NatRole"}]}
        }),
    );
    let boot = nat_instance::boot_config(spec).with_route_tables(tables.iter().cloned());
    r.insert(
        "NatLaunchTemplate".into(),
        json!({
            "Type": "AWS::EC2::LaunchTemplate",
            "Properties": {
                "LaunchTemplateName": name,
                "LaunchTemplateData": {
                    "ImageId": spec.ami,
                    "InstanceType": spec.instance_type,
                    "IamInstanceProfile": {"Arn": {"Fn::GetAtt": ["NatInstanceProfile", "Arn"]}},
                    "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"},
                    "NetworkInterfaces": [{
                        "DeviceIndex": 0,
                        "AssociatePublicIpAddress": true,
                        "Groups": [{"Fn::GetAtt": ["NatSecurityGroup", "GroupId"]}],
                    }],
                    "UserData": {"Fn::Base64": boot.cloud_config()},
                    // natd's policy lets it change only ENIs carrying the stack's tag.
                    "TagSpecifications": [{"ResourceType": "network-interface", "Tags": tags(&spec.stack, &name, &[])}],
                },
                "TagSpecifications": [{"ResourceType": "launch-template", "Tags": tags(&spec.stack, &name, &[])}],
            }
        }),
    );
    let group = |group: &str, subnets: &[String]| {
        let mut tags: Vec<Value> = tags(&spec.stack, group, &[])
            .as_array()
            .cloned()
            .unwrap_or_default();
        for t in &mut tags {
            t["PropagateAtLaunch"] = json!(true);
        }
        json!({
            "Type": "AWS::AutoScaling::AutoScalingGroup",
            // Addresses and routes are natd's to take once it runs: the group's instance
            // needs its profile, group and template first.
            "DependsOn": ["NatRole"],
            "Properties": {
                "AutoScalingGroupName": group,
                "LaunchTemplate": {
                    "LaunchTemplateId": {"Ref": "NatLaunchTemplate"},
                    "Version": {"Fn::GetAtt": ["NatLaunchTemplate", "LatestVersionNumber"]},
                },
                "MinSize": "1",
                "MaxSize": "1",
                "DesiredCapacity": "1",
                "VPCZoneIdentifier": subnets,
                "InstanceMaintenancePolicy": {"MinHealthyPercentage": MIN_HEALTHY, "MaxHealthyPercentage": MAX_HEALTHY},
                // The hook exists before the first launch: natd completes it once it
                // forwards, and an instance that never does is abandoned.
                "LifecycleHookSpecificationList": [{
                    "LifecycleHookName": HOOK,
                    "LifecycleTransition": LAUNCHING_TRANSITION,
                    "HeartbeatTimeout": HOOK_TIMEOUT_SECS,
                    "DefaultResult": "ABANDON",
                }],
                "Tags": tags,
            }
        })
    };
    r.insert("NatGroup".into(), group(&name, &spec.group_subnets()));
    out.insert(
        "NatGroupName".into(),
        json!({"Description": "natd's Auto Scaling group", "Value": {"Ref": "NatGroup"}}),
    );
    if let Some(p) = &spec.pair {
        r.insert(
            "StandbyGroup".into(),
            group(&names.standby(), std::slice::from_ref(&p.subnet_b)),
        );
        out.insert(
            "StandbyGroupName".into(),
            json!({"Description": "the pair's second Auto Scaling group", "Value": {"Ref": "StandbyGroup"}}),
        );
    }
    for n in 0..spec.addresses(0) {
        let id = if n == 0 {
            "EgressAddress".to_string()
        } else {
            format!("EgressAddress{}", n + 1)
        };
        r.insert(
            id.clone(),
            json!({
                "Type": "AWS::EC2::EIP",
                "Properties": {"Domain": "vpc", "Tags": tags(&spec.stack, &name, &[(EGRESS_TAG, &spec.stack)])}
            }),
        );
        out.insert(
            id.clone(),
            json!({"Description": "an egress address natd holds", "Value": {"Ref": id}}),
        );
    }
}

/// The stack's alarms on natd's metrics, as setup sets them.
fn alarm_resources(spec: &alarms::Spec, r: &mut Map<String, Value>) {
    for (a, description) in alarms::wanted_all(spec) {
        let mut p = json!({
            "AlarmName": a.name,
            "AlarmDescription": description,
            "Namespace": a.namespace,
            "MetricName": a.metric,
            "Statistic": a.statistic,
            "ComparisonOperator": a.comparison,
            "Threshold": a.threshold,
            "Period": a.period,
            "EvaluationPeriods": a.periods,
            "TreatMissingData": a.missing,
            "Dimensions": a.dimensions.iter().map(|(k, v)| json!({"Name": k, "Value": v})).collect::<Vec<_>>(),
        });
        if !a.actions.0.is_empty() {
            p["AlarmActions"] = json!(a.actions.0);
            p["OKActions"] = json!(a.actions.1);
        }
        r.insert(
            logical(
                "Alarm",
                &a.name.replacen(&Names(&spec.stack).alarm_prefix(), "", 1),
            ),
            json!({"Type": "AWS::CloudWatch::Alarm", "Properties": p}),
        );
    }
}

/// Prod, zonal: in each AZ an Elastic IP and a NAT gateway in its public subnet, and
/// the default route of that AZ's private tables to it.
fn zonal(spec: &nat_gateways::Spec, r: &mut Map<String, Value>, out: &mut Map<String, Value>) {
    let names = Names(&spec.stack);
    for (az, z) in &spec.azs {
        let name = names.in_az(az);
        let address = logical("Address", az);
        let gateway = logical("Gateway", az);
        r.insert(
            address.clone(),
            json!({
                "Type": "AWS::EC2::EIP",
                "Properties": {"Domain": "vpc", "Tags": tags(&spec.stack, &name, &[(natd_contract::AZ_TAG, az)])}
            }),
        );
        r.insert(
            gateway.clone(),
            json!({
                "Type": "AWS::EC2::NatGateway",
                "Properties": {
                    "SubnetId": z.public_subnet,
                    "AllocationId": {"Fn::GetAtt": [address, "AllocationId"]},
                    "Tags": tags(&spec.stack, &name, &[(natd_contract::AZ_TAG, az)]),
                }
            }),
        );
        out.insert(
            gateway.clone(),
            json!({"Description": format!("the NAT gateway of {az}"), "Value": {"Ref": gateway}}),
        );
        default_routes(r, z.private.iter().map(|s| s.table.as_str()), &gateway);
    }
}

/// The default route of each of `tables` (once each) to the template's gateway
/// `gateway` (its logical id).
fn default_routes<'a>(
    r: &mut Map<String, Value>,
    tables: impl Iterator<Item = &'a str>,
    gateway: &str,
) {
    let tables: std::collections::BTreeSet<&str> = tables.collect();
    for t in tables {
        r.insert(
            logical("Route", t),
            json!({
                "Type": "AWS::EC2::Route",
                "Properties": {"RouteTableId": t, "DestinationCidrBlock": DEFAULT_ROUTE, "NatGatewayId": {"Ref": gateway}}
            }),
        );
    }
}

/// Prod, regional: one NAT gateway for the VPC (AvailabilityMode regional), every
/// private table's default route to it.
fn regional(spec: &nat_gateways::Spec, r: &mut Map<String, Value>, out: &mut Map<String, Value>) {
    let name = Names(&spec.stack).in_az(nat_gateways::REGIONAL);
    r.insert(
        "Gateway".into(),
        json!({
            "Type": "AWS::EC2::NatGateway",
            "Properties": {
                "VpcId": spec.vpc,
                "AvailabilityMode": "regional",
                "ConnectivityType": "public",
                "Tags": tags(&spec.stack, &name, &[(natd_contract::AZ_TAG, nat_gateways::REGIONAL)]),
            }
        }),
    );
    out.insert(
        "Gateway".into(),
        json!({"Description": "the regional NAT gateway", "Value": {"Ref": "Gateway"}}),
    );
    let tables = spec
        .azs
        .values()
        .flat_map(|z| &z.private)
        .map(|s| s.table.as_str());
    default_routes(r, tables, "Gateway");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parts::nat_gateways::{AzSpec, PrivateSubnet};
    use std::collections::BTreeMap;

    const TABLES: [&str; 2] = ["rtb-0aaaaaaaaaaaaaaa1", "rtb-0bbbbbbbbbbbbbbb2"];

    fn dev(pair: bool, eip: bool) -> Request {
        let mut spec = nat_instance::Spec {
            stack: "dev".into(),
            vpc: "vpc-0123456789abcdef0".into(),
            public_subnets: vec!["subnet-0aaaaaaaaaaaaaaa0".into()],
            private_cidrs: ["10.0.1.0/24".to_string(), "10.0.2.0/24".to_string()].into(),
            private_tables: TABLES.map(String::from).into(),
            ami: "ami-0123456789abcdef0".into(),
            instance_type: "t4g.micro".into(),
            eip,
            pair: None,
        };
        if pair {
            spec.pair = Some(nat_instance::Pair {
                subnet_a: "subnet-0aaaaaaaaaaaaaaa0".into(),
                subnet_b: "subnet-0aaaaaaaaaaaaaaa0".into(),
                spread: false,
                egress_ips: Some(2),
                addresses_per_interface: Some(4),
            });
        }
        Request {
            stack: "dev".into(),
            egress: Egress::Dev(spec),
            lambda: None,
            drain_secs: 0,
            flow_logs: FlowLogs::Leave,
            alarms: Some(alarms::Spec {
                stack: "dev".into(),
                pair,
                topic: alarms::Topic::None,
            }),
            ipv6: None,
        }
    }

    fn prod(regional: bool) -> Request {
        let subnet = |n: u8, table: &str| PrivateSubnet {
            id: format!("subnet-0ccccccccccccccc{n}"),
            table: table.into(),
            shared: false,
        };
        let spec = if regional {
            nat_gateways::Spec {
                stack: "prod".into(),
                vpc: "vpc-0123456789abcdef0".into(),
                mode: Mode::Regional,
                azs: [(
                    nat_gateways::REGIONAL.to_string(),
                    AzSpec {
                        public_subnet: String::new(),
                        private: vec![subnet(1, TABLES[0]), subnet(2, TABLES[1])],
                    },
                )]
                .into(),
            }
        } else {
            let mut azs = BTreeMap::new();
            for (n, az) in ["eu-west-1a", "eu-west-1b"].iter().enumerate() {
                azs.insert(
                    az.to_string(),
                    AzSpec {
                        public_subnet: format!("subnet-0ddddddddddddddd{n}"),
                        private: vec![subnet(n as u8, TABLES[n])],
                    },
                );
            }
            nat_gateways::Spec {
                stack: "prod".into(),
                vpc: "vpc-0123456789abcdef0".into(),
                mode: Mode::Zonal,
                azs,
            }
        };
        Request {
            stack: "prod".into(),
            egress: Egress::Prod(spec),
            lambda: None,
            drain_secs: 0,
            flow_logs: FlowLogs::Leave,
            alarms: None,
            ipv6: None,
        }
    }

    /// The template of each kind of stack, as checked in: a change to what natctl
    /// exports shows in review.
    #[test]
    fn each_kind_of_stack_exports_as_its_golden_template() {
        for (file, req) in [
            ("dev", dev(false, false)),
            ("dev-eip", dev(false, true)),
            ("pair", dev(true, false)),
            ("prod-zonal", prod(false)),
            ("prod-regional", prod(true)),
        ] {
            let got = serde_json::to_string_pretty(&cloudformation(&req).expect(file))
                .expect("json")
                + "\n";
            let path = format!(
                "{}/src/testdata/export-{file}.json",
                env!("CARGO_MANIFEST_DIR")
            );
            if std::env::var_os("UPDATE_GOLDEN").is_some() {
                std::fs::write(&path, &got).expect("write golden");
            }
            let want = std::fs::read_to_string(&path).expect("golden file");
            assert_eq!(
                got, want,
                "{file}: rerun with UPDATE_GOLDEN=1 if the change is intended"
            );
        }
    }

    #[test]
    fn a_dev_template_hands_natd_its_tables_by_boot_configuration_and_policy() {
        let t = cloudformation(&dev(false, true)).expect("template");
        let r = &t["Resources"];
        let data = &r["NatLaunchTemplate"]["Properties"]["LaunchTemplateData"];
        let boot_text = data["UserData"]["Fn::Base64"].as_str().expect("user data");
        let boot = nat_instance::boot_config(match &dev(false, true).egress {
            Egress::Dev(s) => s,
            Egress::Prod(_) => unreachable!("a dev request"),
        })
        .with_route_tables(TABLES.map(String::from));
        assert_eq!(boot_text, boot.cloud_config());
        assert!(boot_text.contains("require_eip = true"), "{boot_text}");
        assert_eq!(data["MetadataOptions"]["HttpTokens"], "required");
        assert_eq!(data["MetadataOptions"]["HttpPutResponseHopLimit"], 1);
        let policy = &r["NatRole"]["Properties"]["Policies"][0]["PolicyDocument"];
        assert_eq!(
            *policy,
            agent_policy_with_tables("dev", &TABLES.map(String::from))
        );
        let hooks = &r["NatGroup"]["Properties"]["LifecycleHookSpecificationList"];
        assert_eq!(hooks[0]["LifecycleHookName"], HOOK);
        assert_eq!(r["EgressAddress"]["Type"], "AWS::EC2::EIP");
        let alarms = r
            .as_object()
            .expect("resources")
            .values()
            .filter(|v| v["Type"] == "AWS::CloudWatch::Alarm")
            .count();
        assert_eq!(
            alarms,
            alarms::names("dev").len() - 1,
            "every alarm but the pair's"
        );
    }

    #[test]
    fn a_pair_template_has_two_groups_the_pair_ports_and_its_addresses() {
        let t = cloudformation(&dev(true, false)).expect("template");
        let r = t["Resources"].as_object().expect("resources");
        assert_eq!(
            r["StandbyGroup"]["Properties"]["AutoScalingGroupName"],
            Names("dev").standby()
        );
        for (port, _) in nat_instance::PAIR_PORTS {
            assert_eq!(
                r[&format!("PairIngress{port}")]["Properties"]["FromPort"],
                port
            );
        }
        let eips = r.values().filter(|v| v["Type"] == "AWS::EC2::EIP").count();
        assert_eq!(eips, 2);
        let boot =
            r["NatLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
                .as_str()
                .expect("user data");
        assert!(
            boot.contains("pair = true") && boot.contains("egress_ips = 2"),
            "{boot}"
        );
    }

    #[test]
    fn what_a_template_cannot_say_yet_is_refused_by_name() {
        let mut req = dev(false, false);
        req.flow_logs = FlowLogs::Off;
        let e = cloudformation(&req).expect_err("refused");
        assert!(e.to_string().contains("--flow-logs"), "{e}");
        let mut req = prod(false);
        if let Egress::Prod(spec) = &mut req.egress {
            for z in spec.azs.values_mut() {
                z.private[0].shared = true;
            }
        }
        let e = cloudformation(&req).expect_err("refused");
        assert!(e.to_string().contains("shared"), "{e}");
    }
}
