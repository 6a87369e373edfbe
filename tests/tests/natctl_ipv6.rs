//! `natctl setup --ipv6`: IPv6 egress with no NAT (an egress-only internet gateway),
//! checked with the AWS CLI: refused, naming what lacks an IPv6 block, unless
//! `--add-ipv6-cidrs`; built with the function's Ipv6AllowedForDualStack and LambdaSG's
//! IPv6 egress; a re-run changes nothing; teardown removes what setup added and
//! nothing else (a VPC that was dual-stack before keeps its blocks).

#![allow(clippy::unwrap_used, missing_docs)]

use natd_tests::app::{WIRING, application};
use natd_tests::cli::{doctor_json, natctl, snapshot, stdout};
use natd_tests::emulator::Emulator;
use natd_tests::world::{IMAGE, World, text};

fn vpc_ipv6(emu: &Emulator, vpc: &str) -> Vec<String> {
    emu.aws(&["ec2", "describe-vpcs", "--vpc-ids", vpc])["Vpcs"][0]["Ipv6CidrBlockAssociationSet"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|a| a["Ipv6CidrBlockState"]["State"] == "associated")
        .filter_map(|a| a["Ipv6CidrBlock"].as_str().map(str::to_string))
        .collect()
}

fn subnet_ipv6(emu: &Emulator, subnet: &str) -> Vec<String> {
    emu.aws(&["ec2", "describe-subnets", "--subnet-ids", subnet])["Subnets"][0]
        ["Ipv6CidrBlockAssociationSet"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|a| a["Ipv6CidrBlockState"]["State"] == "associated")
        .filter_map(|a| a["Ipv6CidrBlock"].as_str().map(str::to_string))
        .collect()
}

/// The route table `subnet` uses (its own, else the VPC's main table).
fn table_of(emu: &Emulator, vpc: &str, subnet: &str) -> String {
    let own = emu.aws(&[
        "ec2",
        "describe-route-tables",
        "--filters",
        &format!("Name=association.subnet-id,Values={subnet}"),
    ])["RouteTables"][0]["RouteTableId"]
        .as_str()
        .map(str::to_string);
    own.unwrap_or_else(|| {
        emu.aws(&[
            "ec2",
            "describe-route-tables",
            "--filters",
            "Name=association.main,Values=true",
            &format!("Name=vpc-id,Values={vpc}"),
        ])["RouteTables"][0]["RouteTableId"]
            .as_str()
            .unwrap()
            .to_string()
    })
}

/// The `::/0` egress-only gateway of route table `table`.
fn ipv6_default(emu: &Emulator, table: &str) -> Option<String> {
    emu.aws(&["ec2", "describe-route-tables", "--route-table-ids", table])["RouteTables"][0]
        ["Routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["DestinationIpv6CidrBlock"] == "::/0")
        .and_then(|r| r["EgressOnlyInternetGatewayId"].as_str().map(str::to_string))
}

fn eigws(emu: &Emulator) -> Vec<serde_json::Value> {
    emu.aws(&["ec2", "describe-egress-only-internet-gateways"])["EgressOnlyInternetGateways"]
        .as_array()
        .unwrap()
        .clone()
}

fn function_ipv6(emu: &Emulator) -> bool {
    emu.aws(&[
        "lambda",
        "get-function-configuration",
        "--function-name",
        "app",
    ])["VpcConfig"]["Ipv6AllowedForDualStack"]
        .as_bool()
        .unwrap_or(false)
}

#[tokio::test]
async fn ipv6_egress_is_refused_without_blocks_built_with_them_and_torn_down_to_what_was() {
    let emu = Emulator::start();
    let w = World::new(&emu.sdk()).await;
    application(&emu, &w);
    let before = snapshot(&emu, &w.vpc);
    let mut setup = vec![
        "setup", "--env", "dev", "--vpc", &w.vpc, "--name", "v6", "--ami", IMAGE, "--ipv6",
    ];
    setup.extend(WIRING);

    // The VPC has no IPv6: refused, naming the VPC and each private subnet, before any
    // change.
    let out = natctl(&emu, &setup);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains(&w.vpc), "{said}");
    for s in &w.private_subnets {
        assert!(said.contains(s.as_str()), "names {s}: {said}");
    }
    assert!(said.contains("--add-ipv6-cidrs"), "{said}");
    assert_eq!(snapshot(&emu, &w.vpc), before, "nothing changed");
    // --add-ipv6-cidrs without --ipv6 is bad input too.
    let out = natctl(
        &emu,
        &[
            "plan",
            "--env",
            "dev",
            "--vpc",
            &w.vpc,
            "--name",
            "v6",
            "--ami",
            IMAGE,
            "--add-ipv6-cidrs",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // With the flag, the plan says exactly what changes in the user's network.
    setup.push("--add-ipv6-cidrs");
    let mut plan = setup.clone();
    plan[0] = "plan";
    let out = natctl(&emu, &plan);
    assert!(out.status.success(), "{}", text(&out));
    let p = stdout(&out);
    assert!(
        p.contains(&format!(
            "associate an Amazon-provided IPv6 /56 with {}",
            w.vpc
        )),
        "{p}"
    );
    for s in &w.private_subnets {
        assert!(
            p.contains(&format!("IPv6 /64 of the VPC's block with {s}")),
            "{p}"
        );
    }
    assert!(p.contains("egress-only internet gateway"), "{p}");
    assert!(p.contains("Ipv6AllowedForDualStack"), "{p}");
    assert_eq!(snapshot(&emu, &w.vpc), before, "plan changes nothing");

    let out = natctl(&emu, &setup);
    assert!(out.status.success(), "{}", text(&out));
    let block = vpc_ipv6(&emu, &w.vpc);
    assert_eq!(block.len(), 1, "{block:?}");
    let mut given = Vec::new();
    for s in &w.private_subnets {
        let b = subnet_ipv6(&emu, s);
        assert_eq!(b.len(), 1, "{s}: {b:?}");
        assert!(b[0].ends_with("/64"));
        given.push(b[0].clone());
    }
    given.sort();
    given.dedup();
    assert_eq!(given.len(), w.private_subnets.len(), "one /64 each");
    let gws = eigws(&emu);
    assert_eq!(gws.len(), 1, "{gws:?}");
    let eigw = gws[0]["EgressOnlyInternetGatewayId"].as_str().unwrap();
    assert!(
        gws[0]["Tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["Key"] == "natd:stack" && t["Value"] == "v6")
    );
    for s in &w.private_subnets {
        assert_eq!(
            ipv6_default(&emu, &table_of(&emu, &w.vpc, s)).as_deref(),
            Some(eigw),
            "{s}: ::/0 to the egress-only gateway"
        );
    }
    assert!(function_ipv6(&emu), "the function may use IPv6");
    let lambda_sg = emu.aws(&[
        "ec2",
        "describe-security-groups",
        "--filters",
        "Name=group-name,Values=natd-v6-lambda",
    ])["SecurityGroups"][0]
        .clone();
    assert!(
        lambda_sg["IpPermissionsEgress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["IpProtocol"] == "-1" && p["Ipv6Ranges"].to_string().contains("\"::/0\"")),
        "LambdaSG lets IPv6 out: {lambda_sg}"
    );

    // status shows the IPv6 egress.
    let st = natctl(&emu, &["status", "--name", "v6"]);
    assert!(
        stdout(&st).contains(&format!(
            "IPv6 (no NAT): egress-only internet gateway {eigw}"
        )),
        "{}",
        text(&st)
    );
    assert!(
        stdout(&st).contains(&format!("::/0 -> {eigw} ok")),
        "{}",
        text(&st)
    );

    // Again: nothing to do.
    let again = natctl(&emu, &setup);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        stdout(&again).trim(),
        "No changes necessary.",
        "{}",
        text(&again)
    );

    // doctor evaluates the IPv6 path as it does IPv4: yes; and with the route gone, it
    // names the table.
    emu.settle().await;
    let d = doctor_json(&emu, &w.vpc, "app").expect("doctor answers in JSON");
    assert_eq!(d["answers"][0]["ipv6"]["ok"], true, "{d}");
    assert!(
        d["answers"][0]["ipv6"]["via"].to_string().contains(eigw),
        "{d}"
    );
    let table = table_of(&emu, &w.vpc, &w.private_subnets[0]);
    emu.aws(&[
        "ec2",
        "delete-route",
        "--route-table-id",
        &table,
        "--destination-ipv6-cidr-block",
        "::/0",
    ]);
    emu.settle().await;
    let d = doctor_json(&emu, &w.vpc, "app").expect("doctor answers in JSON");
    let f = d["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "ipv6_unreachable")
        .unwrap_or_else(|| panic!("no ipv6_unreachable: {d}"));
    assert!(f["problem"].to_string().contains(&table), "{f}");
    let st = natctl(&emu, &["status", "--name", "v6"]);
    assert!(
        stdout(&st).contains(&format!("{table}: ::/0 -> none BROKEN")),
        "{}",
        text(&st)
    );
    // setup puts the route back (it is the stack's, tagged on the table).
    let out = natctl(&emu, &setup);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!("route ::/0 in {table}")),
        "{}",
        text(&out)
    );

    // Teardown removes the gateway, the routes, the blocks setup associated, and puts
    // the function back: the VPC is as it was.
    let out = natctl(&emu, &["teardown", "--name", "v6"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!function_ipv6(&emu));
    assert_eq!(snapshot(&emu, &w.vpc), before, "{}", text(&out));

    // A VPC dual-stack before the stack: no flag needed, and teardown keeps its blocks.
    emu.aws(&[
        "ec2",
        "associate-vpc-cidr-block",
        "--vpc-id",
        &w.vpc,
        "--amazon-provided-ipv6-cidr-block",
    ]);
    let vpc_block = vpc_ipv6(&emu, &w.vpc)[0].clone();
    let base: std::net::Ipv6Addr = vpc_block.split('/').next().unwrap().parse().unwrap();
    for (i, s) in w.private_subnets.iter().enumerate() {
        // The (0x10 + i)-th /64 of the VPC's /56.
        let b = std::net::Ipv6Addr::from(u128::from(base) + ((0x10 + i as u128) << 64));
        emu.aws(&[
            "ec2",
            "associate-subnet-cidr-block",
            "--subnet-id",
            s,
            "--ipv6-cidr-block",
            &format!("{b}/64"),
        ]);
    }
    let dual = snapshot(&emu, &w.vpc);
    setup.pop();
    let out = natctl(&emu, &setup);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !stdout(&out).contains("associate"),
        "no block added: {}",
        text(&out)
    );
    assert!(function_ipv6(&emu));
    let out = natctl(&emu, &["teardown", "--name", "v6"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(snapshot(&emu, &w.vpc), dual, "the user's blocks stay");
}
