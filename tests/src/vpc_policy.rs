//! Security groups and network ACLs as the lab's VPC router enforces them: a pure
//! translation of the emulator's state into one `iptables-restore` transaction for the
//! router's namespace.
//!
//! As on AWS:
//! - a **network ACL** is stateless and applies where traffic crosses its subnet's edge:
//!   packets leaving a host for an address outside the host's subnet pass the subnet's
//!   outbound entries (matched on the destination), packets arriving from outside the
//!   subnet pass its inbound entries (matched on the source), replies included; entries
//!   are evaluated by rule number, the first match decides, and nothing matched is denied;
//! - a **security group** is stateful and applies at each ENI: a new connection must be
//!   let out by one of the sender's groups (egress, matched on the destination) and let
//!   in by one of the receiver's groups (ingress, matched on the source); replies of an
//!   admitted connection pass both ways. A rule naming a group admits that group's
//!   members' private addresses. Hosts without groups (NAT gateways) are not filtered.
//!
//! Every chain returns when the packet may go on and drops it otherwise, so the
//! router's other chains (source/dest check) still see what passes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// A host's link on the VPC router.
#[derive(Debug, Clone)]
pub struct Host {
    /// The router's interface towards the host.
    pub link: String,
    /// The subnet's CIDR.
    pub subnet_cidr: String,
    /// The subnet's network ACL, if the lab knows it.
    pub acl: Option<String>,
    /// The ENI's security groups; `None` for hosts without any (NAT gateways).
    pub groups: Option<Vec<String>>,
}

/// One network ACL entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    pub number: i32,
    pub egress: bool,
    pub allow: bool,
    /// IANA protocol number as EC2 writes it ("-1" for all).
    pub protocol: String,
    pub cidr: String,
    pub ports: Option<(i32, i32)>,
}

/// One security group rule (a permission with its peers).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permission {
    /// "tcp", "udp", "icmp", a number, or "-1".
    pub protocol: String,
    pub ports: Option<(i32, i32)>,
    pub cidrs: Vec<String>,
    pub groups: Vec<String>,
}

/// A security group's rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Group {
    pub ingress: Vec<Permission>,
    pub egress: Vec<Permission>,
}

/// Everything the router needs to enforce.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub hosts: Vec<Host>,
    pub acls: BTreeMap<String, Vec<AclEntry>>,
    pub groups: BTreeMap<String, Group>,
    /// Group id -> its members' private addresses.
    pub members: BTreeMap<String, BTreeSet<String>>,
}

/// The chain `FORWARD` jumps to.
pub const CHAIN: &str = "LAB-POLICY";

fn protocol_match(protocol: &str, ports: Option<(i32, i32)>) -> String {
    let name = match protocol {
        "-1" | "all" => return String::new(),
        "6" | "tcp" => "tcp",
        "17" | "udp" => "udp",
        "1" | "icmp" => "icmp",
        other => return format!(" -p {other}"),
    };
    let mut m = format!(" -p {name}");
    if let Some((from, to)) = ports
        && name != "icmp"
        && from >= 0
        && to >= 0
        && !(from <= 0 && to >= 65535)
    {
        let _ = write!(m, " --dport {from}:{to}");
    }
    m
}

fn acl_chain(out: &mut String, chain: &str, entries: &[AclEntry], egress: bool) {
    let mut entries: Vec<&AclEntry> = entries.iter().filter(|e| e.egress == egress).collect();
    entries.sort_by_key(|e| e.number);
    let peer = if egress { "-d" } else { "-s" };
    for e in entries {
        let verdict = if e.allow { "RETURN" } else { "DROP" };
        let _ = writeln!(
            out,
            "-A {chain} {peer} {}{} -j {verdict}",
            e.cidr,
            protocol_match(&e.protocol, e.ports)
        );
    }
    let _ = writeln!(out, "-A {chain} -j DROP");
}

fn group_chain(out: &mut String, chain: &str, policy: &Policy, groups: &[String], egress: bool) {
    let peer = if egress { "-d" } else { "-s" };
    let mut lines = BTreeSet::new();
    for g in groups.iter().filter_map(|g| policy.groups.get(g)) {
        let perms = if egress { &g.egress } else { &g.ingress };
        for p in perms {
            let m = protocol_match(&p.protocol, p.ports);
            let peers = p.cidrs.iter().cloned().chain(
                p.groups
                    .iter()
                    .flat_map(|g| policy.members.get(g).into_iter().flatten())
                    .map(|a| format!("{a}/32")),
            );
            for peer_addr in peers {
                lines.insert(format!("-A {chain} {peer} {peer_addr}{m} -j RETURN"));
            }
        }
    }
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    let _ = writeln!(out, "-A {chain} -j DROP");
}

/// The `iptables-restore --noflush` input that makes the router enforce `policy`, and
/// the chains it defines. `stale` are chains an earlier transaction defined: those no
/// longer needed are removed.
pub fn ruleset(policy: &Policy, stale: &BTreeSet<String>) -> (String, BTreeSet<String>) {
    let mut chains = BTreeSet::new();
    let mut body = String::new();
    let mut main = String::new();
    // Network ACLs first: stateless, replies included.
    for (i, (id, entries)) in policy.acls.iter().enumerate() {
        let used = policy.hosts.iter().any(|h| h.acl.as_ref() == Some(id));
        if !used {
            continue;
        }
        for (egress, dir) in [(true, "O"), (false, "I")] {
            let chain = format!("LAB-ACL{dir}-{i}");
            acl_chain(&mut body, &chain, entries, egress);
            chains.insert(chain);
        }
    }
    let index: BTreeMap<&String, usize> = policy
        .acls
        .keys()
        .enumerate()
        .map(|(i, k)| (k, i))
        .collect();
    for h in &policy.hosts {
        if let Some(i) = h.acl.as_ref().and_then(|a| index.get(a)) {
            let _ = writeln!(
                main,
                "-A {CHAIN} -i {} ! -d {} -j LAB-ACLO-{i}",
                h.link, h.subnet_cidr
            );
            let _ = writeln!(
                main,
                "-A {CHAIN} -o {} ! -s {} -j LAB-ACLI-{i}",
                h.link, h.subnet_cidr
            );
        }
    }
    // Security groups: stateful.
    let _ = writeln!(
        main,
        "-A {CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"
    );
    for h in &policy.hosts {
        let Some(groups) = &h.groups else { continue };
        for (egress, dir, flag) in [(true, "O", "-i"), (false, "I", "-o")] {
            let chain = format!("LAB-SG{dir}-{}", h.link);
            group_chain(&mut body, &chain, policy, groups, egress);
            let _ = writeln!(main, "-A {CHAIN} {flag} {} -j {chain}", h.link);
            chains.insert(chain);
        }
    }
    let mut out = String::from("*filter\n");
    let _ = writeln!(out, ":{CHAIN} - [0:0]");
    for c in &chains {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    let _ = writeln!(out, "-F {CHAIN}");
    for c in &chains {
        let _ = writeln!(out, "-F {c}");
    }
    out.push_str(&body);
    out.push_str(&main);
    for c in stale.difference(&chains) {
        let _ = writeln!(out, "-F {c}\n-X {c}");
    }
    out.push_str("COMMIT\n");
    (out, chains)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(
        protocol: &str,
        ports: Option<(i32, i32)>,
        cidrs: &[&str],
        groups: &[&str],
    ) -> Permission {
        Permission {
            protocol: protocol.into(),
            ports,
            cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn groups_resolve_members_and_acls_keep_their_order() {
        let mut policy = Policy {
            hosts: vec![
                Host {
                    link: "s1".into(),
                    subnet_cidr: "10.20.1.0/24".into(),
                    acl: Some("acl-1".into()),
                    groups: Some(vec!["sg-fn".into()]),
                },
                Host {
                    link: "n3".into(),
                    subnet_cidr: "10.20.3.0/24".into(),
                    acl: Some("acl-1".into()),
                    groups: Some(vec!["sg-db".into()]),
                },
                Host {
                    link: "n4".into(),
                    subnet_cidr: "10.20.0.0/24".into(),
                    acl: None,
                    groups: None,
                },
            ],
            ..Policy::default()
        };
        policy.acls.insert(
            "acl-1".into(),
            vec![
                AclEntry {
                    number: 200,
                    egress: false,
                    allow: true,
                    protocol: "-1".into(),
                    cidr: "0.0.0.0/0".into(),
                    ports: None,
                },
                AclEntry {
                    number: 100,
                    egress: false,
                    allow: false,
                    protocol: "6".into(),
                    cidr: "10.0.0.0/8".into(),
                    ports: Some((5432, 5432)),
                },
            ],
        );
        policy.groups.insert(
            "sg-fn".into(),
            Group {
                ingress: vec![],
                egress: vec![perm("-1", None, &["0.0.0.0/0"], &[])],
            },
        );
        policy.groups.insert(
            "sg-db".into(),
            Group {
                ingress: vec![perm("tcp", Some((5432, 5432)), &[], &["sg-fn"])],
                egress: vec![],
            },
        );
        policy
            .members
            .insert("sg-fn".into(), ["10.20.1.10".to_string()].into());
        let stale: BTreeSet<String> = ["LAB-SGO-n2".to_string()].into();
        let (rules, chains) = ruleset(&policy, &stale);
        let lines: Vec<&str> = rules.lines().collect();
        let deny = lines
            .iter()
            .position(|l| *l == "-A LAB-ACLI-0 -s 10.0.0.0/8 -p tcp --dport 5432:5432 -j DROP")
            .expect(&rules);
        let allow = lines
            .iter()
            .position(|l| *l == "-A LAB-ACLI-0 -s 0.0.0.0/0 -j RETURN")
            .expect(&rules);
        assert!(deny < allow, "rule 100 before rule 200:\n{rules}");
        assert!(lines.contains(&"-A LAB-ACLO-0 -j DROP"), "{rules}");
        assert!(
            lines.contains(&"-A LAB-SGI-n3 -s 10.20.1.10/32 -p tcp --dport 5432:5432 -j RETURN"),
            "{rules}"
        );
        assert!(
            lines.contains(&"-A LAB-SGI-s1 -j DROP"),
            "no ingress rule, nothing in: {rules}"
        );
        assert!(lines.contains(&"-A LAB-POLICY -i s1 ! -d 10.20.1.0/24 -j LAB-ACLO-0"));
        // Stateless ACLs come before the stateful shortcut, groups after it.
        let est = lines
            .iter()
            .position(|l| l.contains("ESTABLISHED"))
            .unwrap();
        let acl_jump = lines
            .iter()
            .position(|l| l.ends_with("-j LAB-ACLI-0"))
            .unwrap();
        let sg_jump = lines
            .iter()
            .position(|l| l.ends_with("-j LAB-SGI-n3"))
            .unwrap();
        assert!(acl_jump < est && est < sg_jump, "{rules}");
        // The gateway has no groups: no chain for it; the stale chain goes.
        assert!(!chains.iter().any(|c| c.ends_with("n4")), "{chains:?}");
        assert!(rules.contains("-X LAB-SGO-n2"), "{rules}");
    }

    #[test]
    fn protocols_and_port_ranges_as_ec2_writes_them() {
        assert_eq!(protocol_match("-1", Some((0, 65535))), "");
        assert_eq!(protocol_match("tcp", Some((0, 65535))), " -p tcp");
        assert_eq!(
            protocol_match("6", Some((1024, 65535))),
            " -p tcp --dport 1024:65535"
        );
        assert_eq!(
            protocol_match("udp", Some((53, 53))),
            " -p udp --dport 53:53"
        );
        assert_eq!(protocol_match("icmp", Some((-1, -1))), " -p icmp");
        assert_eq!(protocol_match("1", Some((8, 0))), " -p icmp");
        assert_eq!(protocol_match("50", None), " -p 50");
    }
}
