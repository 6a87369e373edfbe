//! Security groups, network ACLs and routes evaluated the way AWS evaluates them:
//! address ranges and port ranges, not strings. Pure: no I/O.
//!
//! - A security group rule admits a peer when its protocol and port range cover the
//!   traffic and its source is a CIDR containing the peer's whole address range, or a
//!   group the peer's network interface carries. Several rules add up: the union of the
//!   CIDRs that cover the port is what is admitted (two /1 rules admit everyone).
//!   Groups are stateful: replies need no rule.
//! - A network ACL is stateless: rules are read in rule-number order and the first one
//!   that matches decides; the last rule (`*`) denies. The request and the reply each
//!   need a rule in both subnets' ACLs; replies go to ephemeral ports
//!   ([`EPHEMERAL`]).
//! - A route table sends a destination by its longest matching prefix.

use ipnet::IpNet;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr};

/// The ports a reply goes to: AWS documents 1024-65535 for Lambda functions and NAT
/// gateways, so a network ACL must admit that whole range for replies.
pub const EPHEMERAL: (u16, u16) = (1024, 65535);

/// An address on the internet, for "the internet" as a destination: anything a
/// default route carries and no VPC range contains.
pub fn internet() -> IpNet {
    IpNet::from(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)))
}

/// An IP protocol as EC2 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// `-1`: every protocol (and every port).
    All,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP.
    Icmp,
    /// Any other protocol number.
    Other(u8),
}

impl Proto {
    /// From EC2's `IpProtocol` / ACL `Protocol` (name or number).
    pub fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "-1" | "all" => Self::All,
            "tcp" | "6" => Self::Tcp,
            "udp" | "17" => Self::Udp,
            "icmp" | "1" => Self::Icmp,
            n => n.parse().map(Self::Other).unwrap_or(Self::Other(255)),
        }
    }

    fn admits(self, p: Proto) -> bool {
        self == Self::All || self == p
    }
}

/// Who a security group rule admits (ingress) or lets out to (egress).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    /// An IPv4 or IPv6 range.
    Cidr(IpNet),
    /// Every network interface carrying this group.
    Group(String),
    /// A managed prefix list (not expanded: never taken as admitting a VPC address).
    PrefixList(String),
}

/// One security group rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    /// Protocol.
    pub proto: Proto,
    /// First and last port (ignored for [`Proto::All`]).
    pub ports: (u16, u16),
    /// Source (ingress) or destination (egress).
    pub peer: Peer,
}

impl Rule {
    /// Whether the rule covers `port` of `proto`.
    pub fn covers(&self, proto: Proto, port: u16) -> bool {
        self.proto == Proto::All
            || (self.proto.admits(proto) && self.ports.0 <= port && port <= self.ports.1)
    }

    /// The rule as the console shows it.
    pub fn describe(&self) -> String {
        let what = match self.proto {
            Proto::All => "all traffic".to_string(),
            p => {
                let name = match p {
                    Proto::Tcp => "TCP".to_string(),
                    Proto::Udp => "UDP".to_string(),
                    Proto::Icmp => "ICMP".to_string(),
                    Proto::Other(n) => format!("protocol {n}"),
                    Proto::All => unreachable!(),
                };
                if self.ports == (0, 65535) {
                    format!("{name} all ports")
                } else if self.ports.0 == self.ports.1 {
                    format!("{name} {}", self.ports.0)
                } else {
                    format!("{name} {}-{}", self.ports.0, self.ports.1)
                }
            }
        };
        let peer = match &self.peer {
            Peer::Cidr(c) => c.to_string(),
            Peer::Group(g) => g.clone(),
            Peer::PrefixList(p) => p.clone(),
        };
        format!("{what} {peer}")
    }
}

/// One end of a path: the addresses its network interfaces may have, and their groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// The address range (a subnet, or one address).
    pub range: IpNet,
    /// The security groups on its network interfaces (none: a NAT gateway, the
    /// internet).
    pub groups: Vec<String>,
}

/// Whether `a` and `b` share an address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Whether the union of `ranges` contains all of `target` (split ranges that add up
/// count).
pub fn covered(ranges: &[IpNet], target: &IpNet) -> bool {
    IpNet::aggregate(&ranges.to_vec())
        .iter()
        .any(|r| r.contains(target))
}

/// Whether `rules` (one direction of the union of some groups) admit `peer` for
/// `proto`/`port`.
pub fn admits(rules: &[&Rule], proto: Proto, port: u16, peer: &End) -> bool {
    let on_port: Vec<&&Rule> = rules.iter().filter(|r| r.covers(proto, port)).collect();
    if on_port
        .iter()
        .any(|r| matches!(&r.peer, Peer::Group(g) if peer.groups.contains(g)))
    {
        return true;
    }
    let cidrs: Vec<IpNet> = on_port
        .iter()
        .filter_map(|r| match r.peer {
            Peer::Cidr(c) => Some(c),
            _ => None,
        })
        .collect();
    covered(&cidrs, &peer.range)
}

/// One network ACL entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    /// Rule number (lower first; 32767 is the `*` rule).
    pub number: i32,
    /// Outbound (true) or inbound.
    pub egress: bool,
    /// Protocol.
    pub proto: Proto,
    /// Port range (`None`: all ports).
    pub ports: Option<(u16, u16)>,
    /// The range the rule matches (destination outbound, source inbound).
    pub cidr: IpNet,
    /// Allow or deny.
    pub allow: bool,
}

impl AclEntry {
    fn describe(&self) -> String {
        let ports = match self.ports {
            None => "all ports".to_string(),
            Some((a, b)) if a == b => format!("port {a}"),
            Some((a, b)) => format!("ports {a}-{b}"),
        };
        format!(
            "rule {} {} {} {:?} {ports} {}",
            self.number,
            if self.egress { "outbound" } else { "inbound" },
            if self.allow { "allow" } else { "deny" },
            self.proto,
            self.cidr
        )
    }
}

/// Whether an ACL lets `proto` traffic to ports `ports` through in one direction
/// (`egress`) with `peer` on the other side: `Err` names the rule that stops it. A
/// deny that matches part of the traffic stops it; an allow must match all of it.
pub fn acl_allows(
    entries: &[AclEntry],
    egress: bool,
    proto: Proto,
    ports: (u16, u16),
    peer: &IpNet,
) -> Result<(), String> {
    let mut rules: Vec<&AclEntry> = entries
        .iter()
        .filter(|e| e.egress == egress && e.proto.admits(proto))
        .collect();
    rules.sort_by_key(|e| e.number);
    for e in rules {
        let port_all =
            e.proto == Proto::All || e.ports.is_none_or(|(a, b)| a <= ports.0 && ports.1 <= b);
        let port_some =
            e.proto == Proto::All || e.ports.is_none_or(|(a, b)| a <= ports.1 && ports.0 <= b);
        if !port_some || !overlaps(&e.cidr, peer) {
            continue;
        }
        let whole = port_all && e.cidr.contains(peer);
        if !e.allow {
            return Err(e.describe());
        }
        if whole {
            return Ok(());
        }
    }
    Err(format!(
        "no {} rule allows it (the last rule denies)",
        if egress { "outbound" } else { "inbound" }
    ))
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination range (`None`: a prefix list).
    pub dest: Option<IpNet>,
    /// Target id (`local`, `igw-`, `nat-`, `i-`, `eni-`, `vgw-`, `tgw-`, `pcx-`,
    /// `vpce-`).
    pub target: String,
    /// `active` or `blackhole`.
    pub state: String,
}

/// The route `routes` use for `addr`: longest prefix first.
pub fn lookup<'a>(routes: &'a [Route], addr: &IpNet) -> Option<&'a Route> {
    routes
        .iter()
        .filter(|r| r.dest.is_some_and(|d| d.contains(addr)))
        .max_by_key(|r| r.dest.map(|d| d.prefix_len()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    fn cidr_rule(proto: Proto, ports: (u16, u16), c: &str) -> Rule {
        Rule {
            proto,
            ports,
            peer: Peer::Cidr(net(c)),
        }
    }

    #[test]
    fn security_group_rules_are_ranges() {
        let subnet = End {
            range: net("10.0.1.0/24"),
            groups: vec!["sg-fn".into()],
        };
        let other = End {
            range: net("10.0.2.0/24"),
            groups: vec![],
        };
        let cases: Vec<(Vec<Rule>, Proto, u16, &End, bool)> = vec![
            // A port range covering the port; the VPC range containing the subnet.
            (
                vec![cidr_rule(Proto::Tcp, (5000, 6000), "10.0.0.0/16")],
                Proto::Tcp,
                5432,
                &subnet,
                true,
            ),
            // Wrong port, wrong protocol.
            (
                vec![cidr_rule(Proto::Tcp, (3306, 3306), "10.0.0.0/16")],
                Proto::Tcp,
                5432,
                &subnet,
                false,
            ),
            (
                vec![cidr_rule(Proto::Udp, (5432, 5432), "10.0.0.0/16")],
                Proto::Tcp,
                5432,
                &subnet,
                false,
            ),
            // All protocols: any port.
            (
                vec![cidr_rule(Proto::All, (0, 0), "10.0.1.0/24")],
                Proto::Tcp,
                443,
                &subnet,
                true,
            ),
            // Only half the subnet: a function address may be in the other half.
            (
                vec![cidr_rule(Proto::Tcp, (443, 443), "10.0.1.0/25")],
                Proto::Tcp,
                443,
                &subnet,
                false,
            ),
            // Two halves add up.
            (
                vec![
                    cidr_rule(Proto::Tcp, (443, 443), "10.0.1.0/25"),
                    cidr_rule(Proto::Tcp, (400, 500), "10.0.1.128/25"),
                ],
                Proto::Tcp,
                443,
                &subnet,
                true,
            ),
            // A group reference admits the members, not others.
            (
                vec![Rule {
                    proto: Proto::Tcp,
                    ports: (5432, 5432),
                    peer: Peer::Group("sg-fn".into()),
                }],
                Proto::Tcp,
                5432,
                &subnet,
                true,
            ),
            (
                vec![Rule {
                    proto: Proto::Tcp,
                    ports: (5432, 5432),
                    peer: Peer::Group("sg-fn".into()),
                }],
                Proto::Tcp,
                5432,
                &other,
                false,
            ),
            // IPv6 ranges never admit IPv4 addresses.
            (
                vec![cidr_rule(Proto::All, (0, 0), "::/0")],
                Proto::Tcp,
                443,
                &subnet,
                false,
            ),
            // A prefix list is not expanded.
            (
                vec![Rule {
                    proto: Proto::All,
                    ports: (0, 0),
                    peer: Peer::PrefixList("pl-1".into()),
                }],
                Proto::Tcp,
                443,
                &subnet,
                false,
            ),
        ];
        for (i, (rules, proto, port, peer, want)) in cases.iter().enumerate() {
            let refs: Vec<&Rule> = rules.iter().collect();
            assert_eq!(admits(&refs, *proto, *port, peer), *want, "case {i}");
        }
    }

    #[test]
    fn split_ranges_add_up_to_everything() {
        assert!(covered(
            &[net("0.0.0.0/1"), net("128.0.0.0/1")],
            &net("0.0.0.0/0")
        ));
        assert!(!covered(
            &[net("0.0.0.0/1"), net("128.0.0.0/2")],
            &net("0.0.0.0/0")
        ));
    }

    fn acl(number: i32, egress: bool, ports: Option<(u16, u16)>, c: &str, allow: bool) -> AclEntry {
        AclEntry {
            number,
            egress,
            proto: Proto::Tcp,
            ports,
            cidr: net(c),
            allow,
        }
    }

    #[test]
    fn network_acls_are_ordered_stateless_and_deny_at_the_end() {
        let peer = net("10.0.2.0/24");
        // The default ACL: allow all, both ways.
        let default = vec![
            AclEntry {
                number: 100,
                egress: false,
                proto: Proto::All,
                ports: None,
                cidr: net("0.0.0.0/0"),
                allow: true,
            },
            AclEntry {
                number: 100,
                egress: true,
                proto: Proto::All,
                ports: None,
                cidr: net("0.0.0.0/0"),
                allow: true,
            },
        ];
        assert!(acl_allows(&default, false, Proto::Tcp, (443, 443), &peer).is_ok());
        assert!(acl_allows(&default, true, Proto::Tcp, EPHEMERAL, &peer).is_ok());
        // A lower-numbered deny wins over a later allow.
        let denied = vec![
            acl(200, false, None, "0.0.0.0/0", true),
            acl(100, false, Some((443, 443)), "10.0.2.0/24", false),
        ];
        let e = acl_allows(&denied, false, Proto::Tcp, (443, 443), &peer).expect_err("denied");
        assert!(e.contains("rule 100"), "{e}");
        // Inbound allowed, outbound replies not: no rule, the last rule denies.
        let one_way = vec![acl(100, false, None, "0.0.0.0/0", true)];
        assert!(acl_allows(&one_way, false, Proto::Tcp, (443, 443), &peer).is_ok());
        assert!(acl_allows(&one_way, true, Proto::Tcp, EPHEMERAL, &peer).is_err());
        // Replies admitted only to 32768-65535: part of Lambda's ephemeral range is cut.
        let narrow = vec![acl(100, true, Some((32768, 65535)), "0.0.0.0/0", true)];
        assert!(acl_allows(&narrow, true, Proto::Tcp, EPHEMERAL, &peer).is_err());
        // A deny of part of the range stops it; an allow of part does not settle it.
        let partial = vec![
            acl(90, false, Some((443, 443)), "10.0.2.0/25", true),
            acl(100, false, Some((443, 443)), "10.0.2.128/25", false),
            acl(110, false, Some((443, 443)), "10.0.0.0/16", true),
        ];
        assert!(acl_allows(&partial, false, Proto::Tcp, (443, 443), &peer).is_err());
    }

    #[test]
    fn routes_by_longest_prefix() {
        let routes = vec![
            Route {
                dest: Some(net("10.0.0.0/16")),
                target: "local".into(),
                state: "active".into(),
            },
            Route {
                dest: Some(net("0.0.0.0/0")),
                target: "nat-1".into(),
                state: "active".into(),
            },
            Route {
                dest: Some(net("8.0.0.0/8")),
                target: "pcx-1".into(),
                state: "active".into(),
            },
        ];
        assert_eq!(
            lookup(&routes, &net("10.0.3.4/32")).expect("route").target,
            "local"
        );
        assert_eq!(lookup(&routes, &internet()).expect("route").target, "pcx-1");
        assert_eq!(
            lookup(&routes, &net("1.1.1.1/32")).expect("route").target,
            "nat-1"
        );
        assert!(lookup(&routes[..1], &internet()).is_none());
    }
}
