"""Prints, as one JSON document, everything natctl setup could create or change in a
VPC, read with botocore (the AWS CLI's client library, independent of natctl) in one
process: the VPC with its IPv6 blocks, its subnets with theirs, its egress-only
internet gateways, its route tables, security groups and endpoints, launch templates,
Auto Scaling groups, IAM roles and instance profiles, NAT gateways and endpoints that
are not deleted, Elastic IPs, Lambda functions' VPC configuration, role and tags, and
RDS instances' security groups.

Usage: snapshot.py ENDPOINT REGION VPC_ID   (credentials from the environment)
"""

import json
import sys

import botocore.session


def main(endpoint, region, vpc):
    session = botocore.session.get_session()

    def client(name):
        return session.create_client(name, endpoint_url=endpoint, region_name=region)

    ec2, asg, iam, lam, rds = (
        client("ec2"),
        client("autoscaling"),
        client("iam"),
        client("lambda"),
        client("rds"),
    )
    in_vpc = [{"Name": "vpc-id", "Values": [vpc]}]
    gateways = [g for g in ec2.describe_nat_gateways()["NatGateways"] if g["State"] != "deleted"]
    # A function detached from its VPC reads back with empty lists, as on AWS: the
    # same state as never having had a VPC configuration.
    functions = [
        {
            "FunctionName": f["FunctionName"],
            "Role": f.get("Role"),
            "VpcConfig": f.get("VpcConfig") if (f.get("VpcConfig") or {}).get("SubnetIds") else None,
            "Tags": lam.list_tags(Resource=f["FunctionArn"]).get("Tags", {}),
        }
        for f in lam.list_functions()["Functions"]
    ]
    databases = [
        {
            "DBInstanceIdentifier": d["DBInstanceIdentifier"],
            "VpcSecurityGroups": sorted(g["VpcSecurityGroupId"] for g in d.get("VpcSecurityGroups", [])),
        }
        for d in rds.describe_db_instances()["DBInstances"]
    ]
    endpoints = [
        e
        for e in ec2.describe_vpc_endpoints(Filters=in_vpc)["VpcEndpoints"]
        if e["State"].lower() not in ("deleted", "deleting")
    ]
    def associated(blocks):
        return sorted(
            b.get("Ipv6CidrBlock")
            for b in blocks
            if (b.get("Ipv6CidrBlockState") or {}).get("State") == "associated"
        )

    vpcs = [
        {"VpcId": v["VpcId"], "Ipv6": associated(v.get("Ipv6CidrBlockAssociationSet", [])), "Tags": sorted(v.get("Tags", []), key=lambda t: t["Key"])}
        for v in ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"]
    ]
    subnets = [
        {"SubnetId": s["SubnetId"], "Ipv6": associated(s.get("Ipv6CidrBlockAssociationSet", [])), "Tags": sorted(s.get("Tags", []), key=lambda t: t["Key"])}
        for s in ec2.describe_subnets(Filters=in_vpc)["Subnets"]
    ]
    eigws = [
        g
        for g in ec2.describe_egress_only_internet_gateways()["EgressOnlyInternetGateways"]
        if any(a.get("VpcId") == vpc for a in g.get("Attachments", []))
    ]
    state = {
        "vpcs": vpcs,
        "subnets": subnets,
        "egress_only_internet_gateways": eigws,
        "route_tables": ec2.describe_route_tables(Filters=in_vpc)["RouteTables"],
        "security_groups": ec2.describe_security_groups(Filters=in_vpc)["SecurityGroups"],
        "launch_templates": ec2.describe_launch_templates()["LaunchTemplates"],
        "groups": asg.describe_auto_scaling_groups()["AutoScalingGroups"],
        "roles": iam.list_roles()["Roles"],
        "instance_profiles": iam.list_instance_profiles()["InstanceProfiles"],
        "nat_gateways": gateways,
        "addresses": ec2.describe_addresses()["Addresses"],
        "endpoints": endpoints,
        "functions": functions,
        "databases": databases,
    }
    json.dump(state, sys.stdout, default=str, sort_keys=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
