//! IPv6 paths, evaluated the way IPv4 ones are: a function allowed IPv6
//! (Ipv6AllowedForDualStack) needs, in each of its subnets, an IPv6 block, a `::/0`
//! route to an egress-only (or plain) internet gateway, security groups that let IPv6
//! out and network ACLs that let it out and its replies back. A NAT instance does not
//! route IPv6 (natd keeps IPv6 forwarding off), so `::/0` to an instance is a break.
//! And a function of a dual-stack VPC that reaches the internet only through NAT is
//! advised that its destinations that speak IPv6 could leave by an egress-only gateway
//! instead.

use super::net::{self, End};
use super::{Answer, Facts, Finding, Function, Hop, Severity, hop};

use ipnet::IpNet;

/// `::/0`.
pub fn ipv6_internet() -> IpNet {
    IpNet::V6(ipnet::Ipv6Net::default())
}

impl Facts {
    /// The IPv6 path from `subnet` (with `groups`) to the internet, over HTTPS.
    pub(super) fn ipv6_path(
        &self,
        subnet: &str,
        groups: &[String],
        who: &str,
    ) -> Result<String, Hop> {
        let Some(s) = self.subnets.get(subnet) else {
            return Err(hop(
                subnet,
                format!("subnet {subnet} of {who} is not in the VPC"),
                "configure the function with subnets of this VPC".into(),
            ));
        };
        let Some(block) = s.ipv6 else {
            return Err(hop(
                subnet,
                format!(
                    "subnet {subnet} of {who} has no IPv6 CIDR block, so the function has no IPv6 address there"
                ),
                "give the subnet an IPv6 block: natctl setup --ipv6 --add-ipv6-cidrs".into(),
            ));
        };
        let table = s.table.clone().unwrap_or_default();
        let world = ipv6_internet();
        let route = self.tables.get(&table).and_then(|r| net::lookup(r, &world));
        let Some(r) = route else {
            return Err(hop(
                table.clone(),
                format!(
                    "route table {table} of subnet {subnet} has no IPv6 route to the internet (::/0): {who}'s connections to IPv6 destinations fail"
                ),
                "route ::/0 to an egress-only internet gateway: natctl setup --ipv6".into(),
            ));
        };
        if r.state != "active" {
            return Err(hop(
                table.clone(),
                format!(
                    "route table {table} of subnet {subnet} sends ::/0 to {}, which no longer exists (blackhole)",
                    r.target
                ),
                "point ::/0 at an egress-only internet gateway: natctl setup --ipv6".into(),
            ));
        }
        let via = if r.target.starts_with("eigw-") {
            format!("egress-only internet gateway {}", r.target)
        } else if r.target.starts_with("igw-") {
            format!(
                "internet gateway {} (the function's IPv6 address is public: only its groups keep connections from coming in)",
                r.target
            )
        } else {
            return Err(hop(
                table.clone(),
                format!(
                    "route table {table} sends ::/0 to {}, which does not route IPv6 to the internet (a NAT instance forwards IPv4 only)",
                    r.target
                ),
                "route ::/0 to an egress-only internet gateway: natctl setup --ipv6".into(),
            ));
        };
        let me = End {
            range: IpNet::V6(block),
            groups: groups.to_vec(),
        };
        let them = End {
            range: world,
            groups: vec![],
        };
        self.sg_hop((&me, who), (&them, "the internet over IPv6"), 443)?;
        self.acl_hop(
            subnet,
            true,
            (443, 443),
            &world,
            "HTTPS requests to the internet over IPv6",
        )?;
        self.acl_hop(
            subnet,
            false,
            net::EPHEMERAL,
            &world,
            "replies from the internet over IPv6",
        )?;
        Ok(via)
    }
}

/// The advice for a function that reaches the internet through NAT only.
pub fn could_leave_by_ipv6(f: &Facts, func: &Function, internet: &Answer) -> Option<Finding> {
    if func.ipv6 || !internet.ok || func.subnets.is_empty() {
        return None;
    }
    let via_nat = internet
        .via
        .iter()
        .any(|v| v.contains("NAT gateway") || v.contains("NAT instance"));
    // Said of a dual-stack VPC (one with IPv6 blocks on its subnets), where the move
    // is a flag away; a VPC without IPv6 sees the option priced in `natctl cost`.
    if !via_nat || f.subnets.values().all(|s| s.ipv6.is_none()) {
        return None;
    }
    let bare: Vec<&String> = func
        .subnets
        .iter()
        .filter(|s| f.subnets.get(*s).is_none_or(|x| x.ipv6.is_none()))
        .collect();
    let mut evidence = vec![format!(
        "{} reaches the internet through {}",
        func.name,
        internet.via.join("; ")
    )];
    evidence.push(if bare.is_empty() {
        "its subnets are dual-stack".to_string()
    } else {
        format!(
            "without IPv6 blocks: {}",
            bare.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    Some(Finding {
        severity: Severity::Advice,
        check: "could_leave_by_ipv6",
        resource: func.name.clone(),
        problem: format!(
            "function {} sends all its internet traffic through NAT, billed per GB processed; destinations that speak IPv6 could be reached with no NAT at all, through an egress-only internet gateway (no hourly or per-GB charge)",
            func.name
        ),
        evidence,
        fix: format!(
            "natctl setup --ipv6{} (IPv4 keeps going through NAT); natctl cost --ipv6-share P prices the move",
            if bare.is_empty() {
                ""
            } else {
                " --add-ipv6-cidrs"
            }
        ),
    })
}

/// An endpoint whose private DNS name answers IPv6 addresses only, for a function that
/// has no IPv6: its calls to the service resolve to addresses it cannot reach. The
/// function's Secrets Manager answer turns to no.
pub fn endpoint_dns(f: &Facts, func: &Function, secret: &mut Answer) -> Option<Finding> {
    let e = f.secrets_endpoint()?;
    if !e.private_dns || !e.dns_ipv6_only || func.subnets.is_empty() {
        return None;
    }
    let v6 = func.ipv6
        && func
            .subnets
            .iter()
            .all(|s| f.subnets.get(s).is_some_and(|x| x.ipv6.is_some()));
    if v6 {
        return None;
    }
    let what = format!(
        "Secrets Manager endpoint {} answers its private DNS name with IPv6 addresses only (DnsRecordIpType ipv6), and function {} has no IPv6{}",
        e.id,
        func.name,
        if func.ipv6 {
            " in every subnet"
        } else {
            " (Ipv6AllowedForDualStack off)"
        }
    );
    secret.ok = false;
    secret.via.retain(|v| !v.contains(&e.id));
    secret.broken.push(what.clone());
    Some(Finding {
        severity: Severity::Breaks,
        check: "endpoint_dns_ipv6_only",
        resource: e.id.clone(),
        problem: format!("{what}: its Secrets Manager calls fail"),
        evidence: vec![format!("{}: DnsRecordIpType=ipv6", e.id)],
        fix: format!(
            "aws ec2 modify-vpc-endpoint --vpc-endpoint-id {} --dns-options DnsRecordIpType=dualstack (IPv4 and IPv6 answers), or give the function IPv6: natctl setup --ipv6",
            e.id
        ),
    })
}
