//! A hot standby pair's health, as doctor reads it: what would keep the standby from
//! taking over in a second, and what breaks the pair's egress now.
//!
//! A pair (natctl `setup --env dev --ha`) is two NAT instances whose natd heartbeat each
//! other, sync connection state and check forwarding through the holder, over UDP
//! ports their security group must admit from the pair; the stack's Elastic IPs sit on
//! secondary addresses of the holder's interface, and natd SNATs across all of them.

use super::net::{End, Proto, acl_allows, admits, internet, lookup};
use super::{Facts, Finding, Severity};
use crate::status::NatdReport;
use ipnet::IpNet;
use natd_contract::pair::{PORTS as PAIR_PORTS, SYNC_PORT};

/// A standby's copy behind the holder for this long is a finding (natd asks for a full
/// resync after 15 s, again every 30 s: a lag that outlives two asks is a broken sync
/// channel, not churn).
pub const SYNC_LAG_RISK_SECS: u64 = 60;

/// A hot standby pair of a stack whose route tables are in the VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The stack.
    pub stack: String,
    /// Its running instances (two when whole).
    pub members: Vec<Member>,
    /// The stack's Elastic IPs, by allocation id (the first names the holder).
    pub addresses: Vec<Address>,
    /// The route tables tagged for the stack (`natd:egress`).
    pub tables: Vec<String>,
}

/// One running instance of a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `i-...`
    pub instance: String,
    /// Its primary network interface.
    pub eni: String,
    /// Its primary private address.
    pub address: IpNet,
    /// Its subnet.
    pub subnet: String,
    /// The interface's security groups.
    pub groups: Vec<String>,
    /// Source/dest check on the interface.
    pub source_dest_check: bool,
    /// What its natd last said (`natd:health`), if anything.
    pub natd: Option<NatdReport>,
}

/// One of the pair's Elastic IPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// `eipalloc-...`
    pub allocation: String,
    /// Its public address.
    pub public_ip: String,
    /// The interface it is associated with.
    pub eni: Option<String>,
    /// The private address it is associated with.
    pub private_ip: Option<String>,
}

impl Member {
    /// Its role, when its natd reported recently.
    fn role(&self) -> Option<&str> {
        Some(self.natd.as_ref()?.current_pair()?.role.as_str())
    }

    fn end(&self) -> End {
        End {
            range: self.address,
            groups: self.groups.clone(),
        }
    }
}

impl Pair {
    /// The holder: the member whose natd says so, else the one holding the first
    /// Elastic IP (natd's own rule).
    fn holder(&self) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| m.role() == Some("holder"))
            .or_else(|| {
                let eni = self.addresses.first()?.eni.as_deref()?;
                self.members.iter().find(|m| m.eni == eni)
            })
    }
}

/// Why UDP `port` from `a` does not reach `b`: their security groups, then (in two
/// subnets) their network ACLs.
fn blocked(f: &Facts, a: &Member, b: &Member, port: u16) -> Option<String> {
    let (ea, eb) = (a.end(), b.end());
    if !admits(&f.rules(&a.groups, true), Proto::Udp, port, &eb) {
        return Some(format!(
            "the security group(s) {} of {} let no UDP {port} out to {} ({})",
            f.names(&a.groups),
            a.instance,
            b.instance,
            b.address
        ));
    }
    if !admits(&f.rules(&b.groups, false), Proto::Udp, port, &ea) {
        return Some(format!(
            "the security group(s) {} of {} do not admit UDP {port} from {} ({})",
            f.names(&b.groups),
            b.instance,
            a.instance,
            a.address
        ));
    }
    if a.subnet != b.subnet {
        for (subnet, egress, peer) in [
            (&a.subnet, true, &b.address),
            (&b.subnet, false, &a.address),
        ] {
            let Some(acl) = f.subnets.get(subnet).and_then(|s| s.acl.as_ref()) else {
                continue;
            };
            let Some(entries) = f.acls.get(acl) else {
                continue;
            };
            if let Err(rule) = acl_allows(entries, egress, Proto::Udp, (port, port), peer) {
                return Some(format!(
                    "network ACL {acl} of subnet {subnet} stops UDP {port} {} {peer} ({rule})",
                    if egress { "to" } else { "from" }
                ));
            }
        }
    }
    None
}

/// What doctor says about each pair.
pub fn findings(f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in &f.pairs {
        let stack = &p.stack;
        let status = format!("natctl status --name {stack}");
        match p.members.len() {
            0 => continue, // no egress at all: the routes say so (blackhole)
            1 => out.push(Finding {
                severity: Severity::Risk,
                check: "pair_without_standby",
                resource: p.members[0].instance.clone(),
                problem: format!(
                    "stack {stack} is a hot standby pair but runs one instance ({}): when it fails, egress waits for a replacement to boot and every connection is lost",
                    p.members[0].instance
                ),
                evidence: vec![format!("running instances of {stack}: {}", p.members[0].instance)],
                fix: format!(
                    "if a replacement is launching, wait for it ({status}); else check the standby's Auto Scaling group {} (its activity history says why it has no instance)",
                    crate::aws::names::Names(stack).standby()
                ),
            }),
            _ => {}
        }
        // The pair's own ports, both ways.
        let mut closed = Vec::new();
        for a in &p.members {
            for b in p.members.iter().filter(|b| b.instance != a.instance) {
                for (port, what) in PAIR_PORTS {
                    if let Some(why) = blocked(f, a, b, port) {
                        closed.push(format!(
                            "{what} (UDP {port}), {} to {}: {why}",
                            a.instance, b.instance
                        ));
                    }
                }
            }
        }
        if !closed.is_empty() {
            out.push(Finding {
                severity: Severity::Risk,
                check: "pair_ports_closed",
                resource: stack.clone(),
                problem: format!(
                    "the pair of stack {stack} cannot talk to itself on {} of its ports: the standby does not hear the holder, has no copy of its connections or cannot check it, so a failover is slow, loses connections or does not happen",
                    closed.len()
                ),
                evidence: closed,
                fix: format!(
                    "natctl setup --env dev --ha --name {stack} restores the rule ({} from the stack's security group itself); or add it by hand, and the matching network ACL rules when the pair spans two subnets",
                    natd_contract::pair::ports_in_words()
                ),
            });
        }
        // What each natd says.
        let holders: Vec<&str> = p
            .members
            .iter()
            .filter(|m| m.role() == Some("holder"))
            .map(|m| m.instance.as_str())
            .collect();
        if holders.len() > 1 {
            out.push(Finding {
                severity: Severity::Risk,
                check: "pair_two_holders",
                resource: stack.clone(),
                problem: format!(
                    "both instances of stack {stack}'s pair say they hold the egress: one of them reads the addresses wrong, and no standby is ready",
                ),
                evidence: holders.iter().map(|h| format!("{h}: pair=holder")).collect(),
                fix: format!("{status}; natd's log on each (journalctl -u natd) says why"),
            });
        }
        for m in &p.members {
            match &m.natd {
                None => out.push(Finding {
                    severity: Severity::Risk,
                    check: "pair_member_silent",
                    resource: m.instance.clone(),
                    problem: format!(
                        "natd on {} (stack {stack}'s pair) has never reported: if it does not run, it takes nothing over",
                        m.instance
                    ),
                    evidence: vec![format!("{}: no {} tag", m.instance, natd_contract::HEALTH_TAG)],
                    fix: format!("systemctl status natd on {} (SSM Session Manager); a replacement: terminate it, its group launches another", m.instance),
                }),
                Some(n) if n.stale => out.push(Finding {
                    severity: Severity::Risk,
                    check: "pair_member_silent",
                    resource: m.instance.clone(),
                    problem: format!(
                        "natd on {} (stack {stack}'s pair) last reported {} s ago: it is stopped or cannot reach EC2",
                        m.instance, n.age_secs
                    ),
                    evidence: vec![format!("{}: {} at={}", m.instance, natd_contract::HEALTH_TAG, n.reported_at)],
                    fix: format!("systemctl status natd on {} (SSM Session Manager)", m.instance),
                }),
                Some(_) => {}
            }
            let Some(report) = m
                .natd
                .as_ref()
                .and_then(|n| n.current_pair())
                .filter(|p| p.role == "standby")
            else {
                continue;
            };
            if report.heartbeats != "ok" {
                out.push(Finding {
                    severity: Severity::Risk,
                    check: "pair_standby_deaf",
                    resource: m.instance.clone(),
                    problem: format!(
                        "the standby {} of stack {stack} does not hear the holder (heartbeats {}): it cannot tell a failure from silence, and takes over only after a check through the holder fails",
                        m.instance, report.heartbeats
                    ),
                    evidence: vec![format!("{}: pair=standby beat={}", m.instance, report.heartbeats)],
                    fix: format!("check that the security group admits the pair's UDP ports from itself ({}) and, across subnets, the network ACLs", natd_contract::pair::ports_in_words()),
                });
            }
            if let (Some(entries), Some(secs)) = (report.behind_entries, report.behind_secs)
                && entries > 0
                && secs >= SYNC_LAG_RISK_SECS
            {
                out.push(Finding {
                    severity: Severity::Risk,
                    check: "pair_sync_behind",
                    resource: m.instance.clone(),
                    problem: format!(
                        "the standby {} of stack {stack} has been missing about {entries} of the holder's connections for {secs} s or more: a failover now resets them (the state sync, UDP {SYNC_PORT}, loses or delays updates; natd asks the holder for a full resync every 30 s while it lasts)",
                        m.instance
                    ),
                    evidence: vec![format!("{}: pair=standby lag={entries}/{secs}s", m.instance)],
                    fix: format!("check that the security group admits UDP {SYNC_PORT} from the pair itself (and, across subnets, the network ACLs), and natd's log on both members (journalctl -u natd: conntrackd trouble, resyncs)"),
                });
            }
            if m.source_dest_check {
                out.push(Finding {
                    severity: Severity::Risk,
                    check: "pair_standby_not_ready",
                    resource: m.eni.clone(),
                    problem: format!(
                        "the standby {} of stack {stack} has source/dest check on: EC2 would drop what it forwards after a takeover (natd turns it off when it starts)",
                        m.instance
                    ),
                    evidence: vec![format!("{}: SourceDestCheck=true", m.eni)],
                    fix: format!(
                        "aws ec2 modify-network-interface-attribute --network-interface-id {} --no-source-dest-check, and check natd runs there",
                        m.eni
                    ),
                });
            }
        }
        // The egress addresses: all on the holder.
        let holder = p.holder();
        for a in &p.addresses {
            let on = a.eni.as_deref();
            let member = on.and_then(|e| p.members.iter().find(|m| m.eni == e));
            let (check, problem) = match (on, member, holder) {
                (None, _, _) => (
                    "pair_address_unassociated",
                    format!(
                        "Elastic IP {} of stack {stack} is not associated: the pair SNATs a share of its new connections to it, and those get no answer",
                        a.public_ip
                    ),
                ),
                (Some(e), None, _) => (
                    "pair_address_elsewhere",
                    format!(
                        "Elastic IP {} of stack {stack} is associated with {e}, not with the pair: the connections SNATed to it get no answer",
                        a.public_ip
                    ),
                ),
                (Some(_), Some(m), Some(h)) if m.instance != h.instance => (
                    "pair_address_elsewhere",
                    format!(
                        "Elastic IP {} of stack {stack} is on the standby {}, not on the holder {}: the connections the holder SNATs to it get no answer",
                        a.public_ip, m.instance, h.instance
                    ),
                ),
                _ => continue,
            };
            out.push(Finding {
                severity: Severity::Breaks,
                check,
                resource: a.allocation.clone(),
                problem,
                evidence: vec![format!(
                    "{} ({}): {}",
                    a.allocation,
                    a.public_ip,
                    match (&a.eni, &a.private_ip) {
                        (Some(e), Some(ip)) => format!("associated with {e} at {ip}"),
                        (Some(e), None) => format!("associated with {e}"),
                        _ => "no association".into(),
                    }
                )],
                fix: format!(
                    "the holder's natd moves the stack's addresses to itself when it can (its log says why not); by hand: aws ec2 assign-private-ip-addresses --allow-reassignment on the holder's interface{}, then aws ec2 associate-address --allocation-id {} --network-interface-id ... --private-ip-address ...",
                    holder.map(|h| format!(" {}", h.eni)).unwrap_or_default(),
                    a.allocation
                ),
            });
        }
        // Routes: every table through the holder.
        if let Some(h) = holder {
            for t in &p.tables {
                let Some(r) = f.tables.get(t).and_then(|rs| lookup(rs, &internet())) else {
                    continue;
                };
                let Some(m) = p
                    .members
                    .iter()
                    .find(|m| r.target == m.instance || r.target == m.eni)
                else {
                    continue;
                };
                if m.instance == h.instance {
                    continue;
                }
                out.push(Finding {
                    severity: Severity::Risk,
                    check: "pair_route_to_standby",
                    resource: t.clone(),
                    problem: format!(
                        "route table {t} sends the internet to the standby {} of stack {stack}, which does not hold the egress addresses (the holder {} takes it back while it forwards)",
                        m.instance, h.instance
                    ),
                    evidence: vec![format!("{t}: 0.0.0.0/0 -> {}", r.target)],
                    fix: format!("{status}: if it stays, natd on {} cannot reach EC2 (its log says why)", h.instance),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::net::{Peer, Route, Rule};
    use crate::doctor::{Group, Subnet};

    const SG: &str = "sg-nat";

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    fn report(role: &str, beat: &str) -> Option<NatdReport> {
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        crate::status::parse_natd_health(
            &format!("data=ok control=ok pair={role} peer=i-x beat={beat} synced=12 at={at}"),
            std::time::SystemTime::now(),
        )
    }

    fn member(id: &str, ip: &str, role: &str) -> Member {
        Member {
            instance: format!("i-{id}"),
            eni: format!("eni-{id}"),
            address: net(&format!("{ip}/32")),
            subnet: "subnet-pub".into(),
            groups: vec![SG.into()],
            source_dest_check: false,
            natd: report(role, "ok"),
        }
    }

    fn pair_rules() -> Vec<Rule> {
        PAIR_PORTS
            .iter()
            .map(|(p, _)| Rule {
                proto: Proto::Udp,
                ports: (*p, *p),
                peer: Peer::Group(SG.into()),
            })
            .collect()
    }

    /// A pair as natctl builds it, healthy: the holder "a" holds both addresses and the
    /// table routes through it.
    fn healthy() -> Facts {
        let mut f = Facts::default();
        f.subnets.insert(
            "subnet-pub".into(),
            Subnet {
                az: "eu-west-1a".into(),
                cidr: net("10.0.0.0/24"),
                table: Some("rtb-pub".into()),
                acl: None,
                ipv6: None,
            },
        );
        f.groups.insert(
            SG.into(),
            Group {
                name: "natd-dev".into(),
                ingress: pair_rules(),
                egress: vec![Rule {
                    proto: Proto::All,
                    ports: (0, 65535),
                    peer: Peer::Cidr(net("0.0.0.0/0")),
                }],
            },
        );
        f.tables.insert(
            "rtb-priv".into(),
            vec![Route {
                dest: Some(net("0.0.0.0/0")),
                target: "eni-a".into(),
                state: "active".into(),
            }],
        );
        f.pairs.push(Pair {
            stack: "dev".into(),
            members: vec![
                member("a", "10.0.0.10", "holder"),
                member("b", "10.0.0.11", "standby"),
            ],
            addresses: ["1", "2"]
                .iter()
                .map(|n| Address {
                    allocation: format!("eipalloc-{n}"),
                    public_ip: format!("203.0.113.{n}"),
                    eni: Some("eni-a".into()),
                    private_ip: Some(format!("10.0.0.10{n}")),
                })
                .collect(),
            tables: vec!["rtb-priv".into()],
        });
        f
    }

    fn checks(f: &Facts) -> Vec<(&'static str, String)> {
        findings(f)
            .into_iter()
            .map(|x| (x.check, x.resource))
            .collect()
    }

    #[test]
    fn a_healthy_pair_has_no_finding() {
        assert_eq!(checks(&healthy()), vec![]);
    }

    #[test]
    fn a_pair_whose_ports_are_closed_is_named_port_by_port() {
        let mut f = healthy();
        // The heartbeat rule gone: both directions of 4790, nothing else.
        f.groups
            .get_mut(SG)
            .expect("sg")
            .ingress
            .retain(|r| r.ports.0 != 4790);
        let all = findings(&f);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0].check, "pair_ports_closed");
        assert_eq!(all[0].severity, Severity::Risk);
        assert_eq!(all[0].evidence.len(), 2, "{:?}", all[0].evidence);
        assert!(
            all[0].evidence.iter().all(|e| e.contains("UDP 4790")),
            "{:?}",
            all[0].evidence
        );
        assert!(
            all[0]
                .fix
                .contains("natctl setup --env dev --ha --name dev"),
            "{}",
            all[0].fix
        );
        // A rule from the VPC's range admits it as well as one from the group.
        f.groups.get_mut(SG).expect("sg").ingress.push(Rule {
            proto: Proto::Udp,
            ports: (4790, 4790),
            peer: Peer::Cidr(net("10.0.0.0/16")),
        });
        assert_eq!(checks(&f), vec![]);
    }

    #[test]
    fn across_two_subnets_the_network_acls_must_admit_the_pair() {
        use crate::doctor::net::AclEntry;
        let mut f = healthy();
        f.subnets.insert(
            "subnet-pub-b".into(),
            Subnet {
                az: "eu-west-1b".into(),
                cidr: net("10.0.1.0/24"),
                table: Some("rtb-pub".into()),
                acl: Some("acl-b".into()),
                ipv6: None,
            },
        );
        f.pairs[0].members[1].subnet = "subnet-pub-b".into();
        f.pairs[0].members[1].address = net("10.0.1.11/32");
        // acl-b admits only TCP.
        f.acls.insert(
            "acl-b".into(),
            [true, false]
                .iter()
                .map(|egress| AclEntry {
                    number: 100,
                    egress: *egress,
                    proto: Proto::Tcp,
                    ports: None,
                    cidr: net("0.0.0.0/0"),
                    allow: true,
                })
                .chain([true, false].iter().map(|egress| AclEntry {
                    number: 32767,
                    egress: *egress,
                    proto: Proto::All,
                    ports: None,
                    cidr: net("0.0.0.0/0"),
                    allow: false,
                }))
                .collect(),
        );
        let all = findings(&f);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0].check, "pair_ports_closed");
        assert_eq!(
            all[0].evidence.len(),
            6,
            "every port, both ways: {:?}",
            all[0].evidence
        );
        assert!(
            all[0].evidence.iter().all(|e| e.contains("acl-b")),
            "{:?}",
            all[0].evidence
        );
    }

    #[test]
    fn a_standby_whose_copy_stays_behind_is_a_risk() {
        let standby = |lag: &str| {
            let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            crate::status::parse_natd_health(
                &format!(
                    "data=ok control=ok pair=standby peer=i-a beat=ok synced=12 {lag} at={at}"
                ),
                std::time::SystemTime::now(),
            )
        };
        for (lag, found) in [
            ("lag=0", false),
            ("lag=1200/45s", false),
            ("lag=1200/60s", true),
            ("lag=1200/300s", true),
            ("", false),
        ] {
            let mut f = healthy();
            f.pairs[0].members[1].natd = standby(lag);
            let want = if found {
                vec![("pair_sync_behind", "i-b".to_string())]
            } else {
                vec![]
            };
            assert_eq!(checks(&f), want, "{lag}");
        }
    }

    #[test]
    fn a_missing_silent_deaf_or_unready_standby_is_a_risk() {
        let mut f = healthy();
        f.pairs[0].members.pop();
        assert_eq!(
            checks(&f),
            vec![("pair_without_standby", "i-a".to_string())]
        );

        let mut f = healthy();
        f.pairs[0].members[1].natd = report("standby", "lost");
        assert_eq!(checks(&f), vec![("pair_standby_deaf", "i-b".to_string())]);

        let mut f = healthy();
        f.pairs[0].members[1].natd = None;
        assert_eq!(checks(&f), vec![("pair_member_silent", "i-b".to_string())]);
        let stale = crate::status::parse_natd_health(
            "data=ok control=ok pair=standby beat=ok at=2020-01-01T00:00:00Z",
            std::time::SystemTime::now(),
        );
        f.pairs[0].members[1].natd = stale;
        assert_eq!(checks(&f), vec![("pair_member_silent", "i-b".to_string())]);

        let mut f = healthy();
        f.pairs[0].members[1].source_dest_check = true;
        assert_eq!(
            checks(&f),
            vec![("pair_standby_not_ready", "eni-b".to_string())]
        );

        let mut f = healthy();
        f.pairs[0].members[1].natd = report("holder", "ok");
        assert_eq!(checks(&f), vec![("pair_two_holders", "dev".to_string())]);
    }

    #[test]
    fn an_egress_address_off_the_holder_breaks_a_share_of_connections() {
        let mut f = healthy();
        f.pairs[0].addresses[1].eni = None;
        f.pairs[0].addresses[1].private_ip = None;
        let all = findings(&f);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(
            (all[0].check, all[0].severity, all[0].resource.as_str()),
            ("pair_address_unassociated", Severity::Breaks, "eipalloc-2")
        );
        assert!(all[0].problem.contains("203.0.113.2"), "{}", all[0].problem);

        f.pairs[0].addresses[1].eni = Some("eni-b".into());
        assert_eq!(
            checks(&f),
            vec![("pair_address_elsewhere", "eipalloc-2".to_string())]
        );
        f.pairs[0].addresses[1].eni = Some("eni-stranger".into());
        assert_eq!(
            checks(&f),
            vec![("pair_address_elsewhere", "eipalloc-2".to_string())]
        );
    }

    #[test]
    fn a_table_routed_through_the_standby_is_said() {
        let mut f = healthy();
        f.tables.get_mut("rtb-priv").expect("table")[0].target = "i-b".into();
        assert_eq!(
            checks(&f),
            vec![("pair_route_to_standby", "rtb-priv".to_string())]
        );
    }
}
