//! What the kernel of a NAT instance must look like, decided from facts without I/O:
//! the sysctls and natd's iptables ruleset. [`apply`] holds the thin part that reads
//! and writes the real kernel.

pub mod apply;

use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};

/// natd's chain in the `nat` table, jumped to from POSTROUTING.
pub const NAT_CHAIN: &str = "NATD-POSTROUTING";
/// natd's chain in the `filter` table, jumped to from FORWARD.
pub const FILTER_CHAIN: &str = "NATD-FORWARD";

/// Bytes of kernel memory one conntrack entry costs, rounded up (struct nf_conn plus
/// its extensions and hash bucket is 300-350 bytes on a 64-bit kernel).
const CONNTRACK_ENTRY_BYTES: u64 = 384;
/// Share of RAM the conntrack table may take at most: 1/16 leaves a t4g.nano (512 MiB)
/// ~87k entries and a t4g.micro ~175k, well above the kernel's default for that size.
const CONNTRACK_RAM_SHARE: u64 = 16;
/// Never below the kernel's usual floor, never so large that a big instance pins GiBs.
const CONNTRACK_MIN: u64 = 65_536;
const CONNTRACK_MAX: u64 = 4_194_304;

/// What natd knows about the host when it decides the kernel's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The interface that carries the instance's primary ENI (found by MAC).
    pub egress_interface: String,
    /// All IPv4 CIDR blocks of the VPC.
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// MemTotal in kB, from /proc/meminfo.
    pub mem_total_kb: u64,
    /// Pair mode: the egress addresses (secondary private IPs carrying the stack's
    /// Elastic IPs) natd SNATs to, spread evenly over new connections. Empty: masquerade
    /// to the interface's own address.
    pub egress_ips: Vec<std::net::Ipv4Addr>,
    /// Whether new connections are forwarded. Off while the stack's egress address is
    /// required but not yet ours (a pair before it knows its egress addresses, a single
    /// instance with an Elastic IP before it is on the instance's ENI): connections
    /// already tracked keep flowing, new ones are dropped rather than leave by another
    /// public address.
    pub forward_new: bool,
    /// Pair mode: the VXLAN link to the other instance and its /30, over which the
    /// standby checks that the holder forwards (the holder forwards what arrives on it
    /// like traffic from the VPC).
    pub overlay: Option<(String, Ipv4Net)>,
}

/// One sysctl natd sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    /// Path below /proc/sys, e.g. `net/ipv4/ip_forward`.
    pub key: String,
    /// Value to write; compared with what is read with whitespace folded.
    pub value: String,
    /// Whether forwarding depends on it. A sysctl that is not required is applied when
    /// the kernel lets us (conntrack sizing is read-only inside a container's network
    /// namespace) and a failure is reported once, not treated as broken NAT.
    pub required: bool,
}

/// Conntrack entries for a machine with `mem_total_kb` of memory.
pub fn conntrack_max_for(mem_total_kb: u64) -> u64 {
    (mem_total_kb * 1024 / CONNTRACK_RAM_SHARE / CONNTRACK_ENTRY_BYTES)
        .clamp(CONNTRACK_MIN, CONNTRACK_MAX)
}

/// Parses "LOW HIGH" (any whitespace) into a port range usable for masquerading.
pub fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) if lo >= 1024 && lo < hi => Some((lo, hi)),
        _ => None,
    }
}

/// The sysctls a NAT instance needs, in the order they are applied.
pub fn sysctl_plan(facts: &Facts, port_range: (u16, u16), conntrack: Option<u64>) -> Vec<Sysctl> {
    let iface = &facts.egress_interface;
    let req = |key: String, value: String| Sysctl {
        key,
        value,
        required: true,
    };
    vec![
        req("net/ipv4/ip_forward".into(), "1".into()),
        // Forwarding is decided per receiving interface: with ip_forward at 1, an
        // interface whose own switch is off (a tool, a network manager) forwards nothing
        // it receives, and the instance stops forwarding while ip_forward says it does.
        req(format!("net/ipv4/conf/{iface}/forwarding"), "1".into()),
        // Loose reverse-path filtering: replies to masqueraded flows and traffic from
        // the private subnets arrive on the same interface they leave by, which strict
        // mode (1) can drop when the routing table has more than one path.
        req(format!("net/ipv4/conf/{iface}/rp_filter"), "2".into()),
        // A NAT instance must not tell clients to bypass it: with all=0 and iface=0 no
        // redirects are sent (the kernel ORs the two).
        req("net/ipv4/conf/all/send_redirects".into(), "0".into()),
        req(format!("net/ipv4/conf/{iface}/send_redirects"), "0".into()),
        req(
            "net/ipv4/ip_local_port_range".into(),
            format!("{} {}", port_range.0, port_range.1),
        ),
        Sysctl {
            key: "net/netfilter/nf_conntrack_max".into(),
            value: conntrack
                .unwrap_or_else(|| conntrack_max_for(facts.mem_total_kb))
                .to_string(),
            required: false,
        },
        // IPv6 through a NAT instance is not NAT: forwarded, it would be plain routing,
        // a door from the internet into the VPC's IPv6 addresses. The VPC's IPv6 egress
        // is an egress-only internet gateway, not this instance, so the instance routes
        // no IPv6 at all (kept so on every pass; logged when natd finds it on). Not
        // required: a host without IPv6 has no such key.
        Sysctl {
            key: IPV6_FORWARDING.into(),
            value: "0".into(),
            required: false,
        },
    ]
}

/// The switch that makes the host route IPv6 between its interfaces.
pub const IPV6_FORWARDING: &str = "net/ipv6/conf/all/forwarding";

/// natd's rules, per table, in the exact form `iptables-save` prints them, so that the
/// rules read back can be compared with these line by line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    /// Rules of [`NAT_CHAIN`] (without the `-A CHAIN` prefix).
    pub nat: Vec<String>,
    /// Rules of [`FILTER_CHAIN`].
    pub filter: Vec<String>,
}

/// The ruleset for `facts`: masquerade only VPC sources leaving by the egress
/// interface, never VPC-internal destinations; forward VPC-to-outside and replies;
/// drop everything else, so the instance is no door into the VPC.
pub fn ruleset(facts: &Facts) -> Ruleset {
    let o = &facts.egress_interface;
    let mut nat = Vec::new();
    for c in &facts.vpc_cidrs {
        nat.push(format!("-d {c} -j RETURN"));
    }
    let sources: Vec<String> = facts
        .vpc_cidrs
        .iter()
        .chain(facts.overlay.as_ref().map(|(_, net)| net))
        .map(ToString::to_string)
        .collect();
    let n = facts.egress_ips.len();
    let opened: &[String] = if facts.forward_new { &sources } else { &[] };
    for c in opened {
        if n == 0 {
            nat.push(format!("-s {c} -o {o} -j MASQUERADE"));
            continue;
        }
        // New connections only reach the nat table: rule i takes every (n-i)th of the
        // ones that fall through to it, so each address gets 1/n of them. The
        // instance's own traffic (natd's API calls, probes, the pair's channels) keeps
        // its own address: only forwarded traffic leaves by the egress addresses,
        // which move between the pair.
        for (i, ip) in facts.egress_ips.iter().enumerate() {
            let left = n - i;
            if left > 1 {
                nat.push(format!(
                    "-s {c} -o {o} -m addrtype ! --src-type LOCAL -m statistic --mode nth --every {left} --packet 0 -j SNAT --to-source {ip}"
                ));
            } else {
                nat.push(format!(
                    "-s {c} -o {o} -m addrtype ! --src-type LOCAL -j SNAT --to-source {ip}"
                ));
            }
        }
    }
    // Replies and the rest of open connections, counted by direction (natd's
    // CloudWatch metrics read these counters): from the VPC out, back to the VPC, and
    // any other (as before the split, accepted).
    let mut filter = vec!["-m conntrack --ctstate INVALID -j DROP".to_string()];
    // Counts, without deciding anything, the first reply of each connection back to
    // the VPC: a connection established (ConnectionEstablishedCount). The connbytes
    // match turns on the kernel's per-connection accounting.
    for c in &sources {
        filter.push(format!("-d {c} {ESTABLISHED_COUNTER}"));
    }
    for c in &sources {
        filter.push(format!(
            "-s {c} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        ));
    }
    for c in &sources {
        filter.push(format!(
            "-d {c} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        ));
    }
    filter.push("-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_string());
    for c in opened {
        filter.push(format!("-s {c} -o {o} -j ACCEPT"));
    }
    filter.push("-j DROP".to_string());
    Ruleset { nat, filter }
}

/// The match of the rule (one per VPC range, `-d` the range, no target) counting each
/// connection's first reply: its packet counter is the number of connections
/// established. As `iptables-save` prints it.
const ESTABLISHED_COUNTER: &str = "-m conntrack --ctstate ESTABLISHED --ctdir REPLY -m connbytes --connbytes 1:1 --connbytes-mode packets --connbytes-dir reply";

/// Packets accepted by natd's forward chain, from `iptables-save -c` output: the sum of
/// the counters of its ACCEPT rules (every forwarded packet passes one of them).
pub fn forwarded_packets(save: &str) -> u64 {
    let prefix = format!("-A {FILTER_CHAIN} ");
    save.lines()
        .filter_map(|l| {
            let (counters, rule) = l.strip_prefix('[')?.split_once("] ")?;
            (rule.starts_with(&prefix) && rule.ends_with("-j ACCEPT")).then_some(counters)
        })
        .filter_map(|c| c.split(':').next()?.parse::<u64>().ok())
        .sum()
}

/// natd's forward chain's counters, by direction: what its CloudWatch metrics report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Packets from the VPC forwarded out (new connections and the rest of open ones).
    pub out_packets: u64,
    /// Their bytes.
    pub out_bytes: u64,
    /// Packets forwarded back into the VPC (replies).
    pub back_packets: u64,
    /// Their bytes.
    pub back_bytes: u64,
    /// First packets of new connections from the VPC.
    pub new_packets: u64,
    /// Packets dropped (invalid, or neither from the VPC nor a reply).
    pub dropped_packets: u64,
    /// Connections established: first replies forwarded back into the VPC.
    pub established: u64,
}

/// [`Traffic`] from `iptables-save -c` output.
pub fn traffic(save: &str) -> Traffic {
    let prefix = format!("-A {FILTER_CHAIN} ");
    let mut t = Traffic::default();
    for l in save.lines() {
        let Some((counters, rule)) = l.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
            continue;
        };
        let Some(rule) = rule.strip_prefix(&prefix) else {
            continue;
        };
        let Some((p, b)) = counters.split_once(':') else {
            continue;
        };
        let (p, b) = (p.parse::<u64>().unwrap_or(0), b.parse::<u64>().unwrap_or(0));
        let open = rule.contains("--ctstate RELATED,ESTABLISHED");
        if rule.ends_with(ESTABLISHED_COUNTER) {
            t.established += p;
        } else if rule.ends_with("-j DROP") {
            t.dropped_packets += p;
        } else if open && rule.starts_with("-s ") {
            t.out_packets += p;
            t.out_bytes += b;
        } else if open && rule.starts_with("-d ") {
            t.back_packets += p;
            t.back_bytes += b;
        } else if rule.starts_with("-s ") && rule.ends_with("-j ACCEPT") {
            t.out_packets += p;
            t.out_bytes += b;
            t.new_packets += p;
        }
    }
    t
}

/// What `iptables-save` shows of natd's chains and the jumps into them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// Rules per natd chain; a chain that does not exist is absent.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Where the jumps into each natd chain sit in its built-in chain: 1-based rule
    /// positions, in order. Correct is exactly `[1]`.
    pub jumps: BTreeMap<String, Vec<usize>>,
}

/// The built-in chain that must jump to each natd chain first.
const HOOKS: [(&str, &str, &str); 2] = [
    ("nat", "POSTROUTING", NAT_CHAIN),
    ("filter", "FORWARD", FILTER_CHAIN),
];

/// Reads natd's chains out of `iptables-save` output; everything else is ignored.
pub fn observe(save: &str) -> Observed {
    let mut o = Observed::default();
    let mut position: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut table = String::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if name == NAT_CHAIN || name == FILTER_CHAIN {
                o.chains.entry(name.to_string()).or_default();
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let Some((chain, spec)) = rule.split_once(' ') else {
                continue;
            };
            let n = position
                .entry((table.clone(), chain.to_string()))
                .or_default();
            *n += 1;
            if chain == NAT_CHAIN || chain == FILTER_CHAIN {
                o.chains
                    .entry(chain.to_string())
                    .or_default()
                    .push(spec.to_string());
            } else if let Some(target) = spec.strip_prefix("-j ")
                && let Some((_, builtin, ours)) = HOOKS.iter().find(|h| h.2 == target)
                && chain == *builtin
            {
                o.jumps.entry(ours.to_string()).or_default().push(*n);
            }
        }
    }
    o
}

/// What a previous natd left in the kernel: the addresses its nat chain SNATs to (in
/// rule order, each once) and whether its filter chain forwarded new connections. A
/// restarted natd starts from them, so a restart (a crash, an upgrade) changes neither
/// the public address new connections leave by nor whether they are forwarded.
pub fn left_by_previous_run(observed: &Observed) -> (Vec<std::net::Ipv4Addr>, bool) {
    let mut ips = Vec::new();
    for rule in observed.chains.get(NAT_CHAIN).into_iter().flatten() {
        let mut words = rule.split_whitespace();
        while let Some(w) = words.next() {
            if w == "--to-source"
                && let Some(ip) = words.next().and_then(|a| a.parse().ok())
                && !ips.contains(&ip)
            {
                ips.push(ip);
            }
        }
    }
    let open = observed
        .chains
        .get(FILTER_CHAIN)
        .into_iter()
        .flatten()
        .any(|r| r.starts_with("-s ") && !r.contains("--ctstate") && r.ends_with("-j ACCEPT"));
    (ips, open)
}

/// The `iptables-restore --noflush` input that turns `observed` into `desired`, or
/// `None` when the kernel already matches. A natd chain is flushed and refilled whole
/// within one table commit (atomic per table). In the built-in chain natd keeps exactly
/// one jump, as its first rule: when the jump is missing, doubled or below another rule
/// (software that inserted itself above natd could let traffic bypass natd's drop),
/// every natd jump is deleted and one inserted at the top, in the same commit, so there
/// is no moment without it. Other software's rules are never touched.
pub fn restore_input(desired: &Ruleset, observed: &Observed) -> Option<String> {
    let mut out = String::new();
    for (table, builtin, chain) in HOOKS {
        let rules = if chain == NAT_CHAIN {
            &desired.nat
        } else {
            &desired.filter
        };
        let jumps = observed.jumps.get(chain).map(Vec::as_slice).unwrap_or(&[]);
        let current = observed.chains.get(chain);
        let hook_ok = jumps == [1];
        if hook_ok && current == Some(rules) {
            continue;
        }
        out.push_str(&format!("*{table}\n"));
        if current != Some(rules) {
            out.push_str(&format!(":{chain} - [0:0]\n"));
            for r in rules {
                out.push_str(&format!("-A {chain} {r}\n"));
            }
        }
        if !hook_ok {
            for _ in jumps {
                out.push_str(&format!("-D {builtin} -j {chain}\n"));
            }
            out.push_str(&format!("-I {builtin} 1 -j {chain}\n"));
        }
        out.push_str("COMMIT\n");
    }
    (!out.is_empty()).then_some(out)
}

/// What is wrong with natd's hooks, in words, for the drift log; empty when they are
/// right.
pub fn hook_drift(observed: &Observed) -> Vec<String> {
    HOOKS
        .iter()
        .filter_map(|(_, builtin, chain)| {
            let jumps = observed.jumps.get(*chain).map(Vec::as_slice).unwrap_or(&[]);
            match jumps {
                [1] => None,
                [] => Some(format!("jump from {builtin} to {chain} missing")),
                [p] => Some(format!(
                    "jump from {builtin} to {chain} at position {p}, below other rules"
                )),
                many => Some(format!(
                    "{} jumps from {builtin} to {chain} (positions {:?})",
                    many.len(),
                    many
                )),
            }
        })
        .collect()
}

/// How masquerading uses source ports: the kernel picks a source port per connection
/// *per destination* (protocol, address, port), so the busiest destination is what
/// runs out first, at the size of `ip_local_port_range`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NatUse {
    /// Masqueraded connections tracked.
    pub total: usize,
    /// Connections to the busiest single destination.
    pub busiest: usize,
    /// Open connections (TCP established, UDP streams) whose timeout ends within the
    /// horizon asked for, by their original tuple: those still idle at the next look
    /// are gone by timeout, not closed (a NAT gateway's IdleTimeoutCount).
    pub expiring: BTreeSet<String>,
    /// Every connection's original tuple, when asked for (to tell which expiring ones
    /// went).
    pub present: BTreeSet<String>,
}

/// A connection's original tuple in a `conntrack -L` line: protocol and the first
/// `src=`, `dst=`, `sport=`, `dport=`.
fn tuple(line: &str) -> String {
    let mut t = line.split_whitespace().next().unwrap_or("").to_string();
    for name in ["src=", "dst=", "sport=", "dport="] {
        if let Some(w) = line.split_whitespace().find(|w| w.starts_with(name)) {
            t.push(' ');
            t.push_str(w);
        }
    }
    t
}

/// Reads `conntrack -L --src-nat` output (one entry per line, the original direction's
/// `dst=` and `dport=` first).
pub fn nat_use(listing: &str) -> NatUse {
    nat_use_within(listing, None, &BTreeSet::new())
}

/// [`nat_use`], also listing the open connections whose timeout ends within `horizon`
/// seconds, and which of `watched` (the last look's expiring ones) are still present.
pub fn nat_use_within(listing: &str, horizon: Option<u64>, watched: &BTreeSet<String>) -> NatUse {
    let mut per: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let mut total = 0;
    let mut expiring = BTreeSet::new();
    let mut present = BTreeSet::new();
    for line in listing.lines() {
        let mut words = line.split_whitespace();
        let Some(proto) = words.next() else { continue };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or("")
                .to_string()
        };
        let dst = field("dst=");
        if dst.is_empty() {
            continue;
        }
        total += 1;
        if let Some(horizon) = horizon {
            // `tcp 6 <timeout> <state> ...`, `udp 17 <timeout> src=... [ASSURED]`.
            let mut w = line.split_whitespace().skip(2);
            let timeout = w.next().and_then(|t| t.parse::<u64>().ok());
            let open = match proto {
                "tcp" => w.next() == Some("ESTABLISHED"),
                "udp" => line.contains("[ASSURED]"),
                _ => false,
            };
            let key = (!watched.is_empty() || open).then(|| tuple(line));
            if let Some(key) = key {
                if open && timeout.is_some_and(|t| t <= horizon) {
                    expiring.insert(key.clone());
                }
                if watched.contains(&key) {
                    present.insert(key);
                }
            }
        }
        *per.entry((proto.to_string(), dst, field("dport=")))
            .or_default() += 1;
    }
    NatUse {
        total,
        busiest: per.values().copied().max().unwrap_or(0),
        expiring,
        present,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            egress_interface: "ens5".into(),
            egress_ips: Vec::new(),
            forward_new: true,
            overlay: None,
            vpc_cidrs: vec![
                "10.20.0.0/16".parse().expect("cidr"),
                "100.64.0.0/20".parse().expect("cidr"),
            ],
            mem_total_kb: 1_000_000,
        }
    }

    fn saved(r: &Ruleset) -> String {
        let mut s = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n");
        s.push_str(&format!(
            ":{FILTER_CHAIN} - [0:0]\n-A FORWARD -j {FILTER_CHAIN}\n"
        ));
        s.push_str("-A FORWARD -i docker0 -j ACCEPT\n");
        for l in &r.filter {
            s.push_str(&format!("-A {FILTER_CHAIN} {l}\n"));
        }
        s.push_str("COMMIT\n*nat\n:POSTROUTING ACCEPT [0:0]\n");
        s.push_str(&format!(
            ":{NAT_CHAIN} - [0:0]\n-A POSTROUTING -j {NAT_CHAIN}\n"
        ));
        for l in &r.nat {
            s.push_str(&format!("-A {NAT_CHAIN} {l}\n"));
        }
        s.push_str("COMMIT\n");
        s
    }

    #[test]
    fn ruleset_matches_golden_file() {
        let desired = ruleset(&facts());
        let got = restore_input(&desired, &Observed::default()).expect("changes");
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/kernel/testdata/ruleset.golden"
        );
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &got).expect("write golden");
        }
        let want = std::fs::read_to_string(path).expect("golden file");
        assert_eq!(
            got, want,
            "rerun with UPDATE_GOLDEN=1 if the change is intended"
        );
    }

    #[test]
    fn held_forwards_no_new_connection_and_a_restart_starts_where_the_last_run_was() {
        let ip: std::net::Ipv4Addr = "10.20.1.9".parse().expect("ip");
        let held = ruleset(&Facts {
            egress_ips: vec![ip],
            forward_new: false,
            ..facts()
        });
        assert!(
            !held
                .nat
                .iter()
                .any(|r| r.contains("SNAT") || r.contains("MASQUERADE"))
        );
        assert!(
            !held
                .filter
                .iter()
                .any(|r| r.starts_with("-s ") && !r.contains("--ctstate")),
            "{:?}",
            held.filter
        );
        assert_eq!(held.filter.last().map(String::as_str), Some("-j DROP"));
        assert!(
            held.filter
                .iter()
                .any(|r| r.contains("RELATED,ESTABLISHED -j ACCEPT"))
        );
        assert_eq!(
            left_by_previous_run(&observe(&saved(&held))),
            (vec![], false)
        );
        let second: std::net::Ipv4Addr = "10.20.1.10".parse().expect("ip");
        let open = ruleset(&Facts {
            egress_ips: vec![ip, second],
            ..facts()
        });
        assert_eq!(
            left_by_previous_run(&observe(&saved(&open))),
            (vec![ip, second], true)
        );
        assert_eq!(
            left_by_previous_run(&observe(&saved(&ruleset(&facts())))),
            (vec![], true)
        );
        assert_eq!(left_by_previous_run(&Observed::default()), (vec![], false));
    }

    #[test]
    fn matching_kernel_needs_no_change() {
        let desired = ruleset(&facts());
        let observed = observe(&saved(&desired));
        assert_eq!(restore_input(&desired, &observed), None);
    }

    #[test]
    fn flushed_chain_is_refilled_and_only_that_table_touched() {
        let desired = ruleset(&facts());
        let mut observed = observe(&saved(&desired));
        observed.chains.insert(NAT_CHAIN.into(), vec![]);
        let input = restore_input(&desired, &observed).expect("repair");
        assert!(input.starts_with("*nat\n"));
        assert!(!input.contains("*filter"));
        assert!(
            !input.contains("-I POSTROUTING"),
            "jump still present: {input}"
        );
        assert_eq!(input.matches("MASQUERADE").count(), 2);
    }

    #[test]
    fn missing_jump_is_inserted_and_duplicates_removed() {
        let desired = ruleset(&facts());
        let mut observed = observe(&saved(&desired));
        observed.jumps.insert(NAT_CHAIN.into(), vec![]);
        observed.jumps.insert(FILTER_CHAIN.into(), vec![1, 3, 4]);
        let input = restore_input(&desired, &observed).expect("repair");
        assert!(input.contains("-I POSTROUTING 1 -j NATD-POSTROUTING\n"));
        assert!(!input.contains("-D POSTROUTING"), "{input}");
        assert_eq!(input.matches("-D FORWARD -j NATD-FORWARD\n").count(), 3);
        assert!(input.contains("-I FORWARD 1 -j NATD-FORWARD\n"), "{input}");
        // Only the hooks changed: natd's chains are not refilled.
        assert!(!input.contains(":NATD-"), "{input}");
    }

    #[test]
    fn hook_positions_are_read_per_builtin_chain() {
        let desired = ruleset(&facts());
        let text = saved(&desired).replace(
            "-A FORWARD -j NATD-FORWARD\n-A FORWARD -i docker0 -j ACCEPT\n",
            "-A FORWARD -s 203.0.113.0/24 -j ACCEPT\n-A FORWARD -i docker0 -j ACCEPT\n-A FORWARD -j NATD-FORWARD\n-A FORWARD -j NATD-FORWARD\n",
        );
        let o = observe(&text);
        assert_eq!(o.jumps.get(FILTER_CHAIN), Some(&vec![3, 4]));
        assert_eq!(o.jumps.get(NAT_CHAIN), Some(&vec![1]));
        assert_eq!(
            hook_drift(&o),
            vec!["2 jumps from FORWARD to NATD-FORWARD (positions [3, 4])".to_string()]
        );
        let input = restore_input(&desired, &o).expect("repair");
        assert_eq!(
            input,
            "*filter\n-D FORWARD -j NATD-FORWARD\n-D FORWARD -j NATD-FORWARD\n-I FORWARD 1 -j NATD-FORWARD\nCOMMIT\n"
        );
        // A jump below a foreign rule is drift too.
        let below = saved(&desired).replace(
            "-A FORWARD -j NATD-FORWARD\n-A FORWARD -i docker0 -j ACCEPT\n",
            "-A FORWARD -i docker0 -j ACCEPT\n-A FORWARD -j NATD-FORWARD\n",
        );
        let o = observe(&below);
        assert_eq!(o.jumps.get(FILTER_CHAIN), Some(&vec![2]));
        assert!(hook_drift(&o)[0].contains("position 2"));
        assert!(restore_input(&desired, &o).is_some());
        // A jump with conditions is someone else's rule, not natd's hook.
        let conditional = saved(&desired).replace(
            "-A FORWARD -i docker0 -j ACCEPT\n",
            "-A FORWARD -i docker0 -j NATD-FORWARD\n",
        );
        assert_eq!(
            observe(&conditional).jumps.get(FILTER_CHAIN),
            Some(&vec![1])
        );
    }

    #[test]
    fn other_software_rules_are_not_ours() {
        let observed = observe(&saved(&ruleset(&facts())));
        let all: Vec<&String> = observed.chains.values().flatten().collect();
        assert!(all.iter().all(|r| !r.contains("docker0")));
    }

    #[test]
    fn sysctl_plan_covers_forwarding_and_interface() {
        let plan = sysctl_plan(&facts(), (1024, 65535), None);
        let get = |k: &str| plan.iter().find(|s| s.key == k).map(|s| s.value.as_str());
        assert_eq!(get("net/ipv4/ip_forward"), Some("1"));
        assert_eq!(get("net/ipv4/conf/ens5/forwarding"), Some("1"));
        assert_eq!(get("net/ipv4/conf/ens5/rp_filter"), Some("2"));
        assert_eq!(get("net/ipv4/conf/all/send_redirects"), Some("0"));
        assert_eq!(get("net/ipv4/conf/ens5/send_redirects"), Some("0"));
        assert_eq!(get("net/ipv4/ip_local_port_range"), Some("1024 65535"));
        assert_eq!(get("net/netfilter/nf_conntrack_max"), Some("166666"));
        let ct = plan
            .iter()
            .find(|s| s.key.ends_with("conntrack_max"))
            .expect("ct");
        assert!(!ct.required);
        let v6 = plan
            .iter()
            .find(|s| s.key == IPV6_FORWARDING)
            .expect("IPv6 forwarding");
        assert_eq!((v6.value.as_str(), v6.required), ("0", false));
        let fixed = sysctl_plan(&facts(), (1024, 65535), Some(500_000));
        assert!(fixed.iter().any(|s| s.value == "500000"));
    }

    #[test]
    fn forwarded_packets_are_counted_from_the_accept_rules_of_natds_chain() {
        let save = "\
*filter
:FORWARD ACCEPT [0:0]
:NATD-FORWARD - [0:0]
[900:1000] -A FORWARD -j NATD-FORWARD
[3:180] -A NATD-FORWARD -m conntrack --ctstate INVALID -j DROP
[40:4000] -A NATD-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
[2:120] -A NATD-FORWARD -s 10.20.0.0/16 -o ens5 -j ACCEPT
[7:420] -A NATD-FORWARD -j DROP
[5:300] -A OTHER -j ACCEPT
COMMIT
";
        assert_eq!(forwarded_packets(save), 42);
        assert_eq!(forwarded_packets(""), 0);
    }

    #[test]
    fn traffic_is_counted_by_direction_from_natds_chain() {
        let rules = ruleset(&facts());
        assert!(
            rules
                .filter
                .iter()
                .any(|r| r.starts_with("-s ") && r.contains("ESTABLISHED")),
            "{:?}",
            rules.filter
        );
        let save = "\
*filter
:NATD-FORWARD - [0:0]
[3:180] -A NATD-FORWARD -m conntrack --ctstate INVALID -j DROP
[4:240] -A NATD-FORWARD -d 10.20.0.0/16 -m conntrack --ctstate ESTABLISHED --ctdir REPLY -m connbytes --connbytes 1:1 --connbytes-mode packets --connbytes-dir reply
[50:40000] -A NATD-FORWARD -s 10.20.0.0/16 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
[80:900000] -A NATD-FORWARD -d 10.20.0.0/16 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
[1:60] -A NATD-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
[2:120] -A NATD-FORWARD -s 10.20.0.0/16 -o ens5 -j ACCEPT
[7:420] -A NATD-FORWARD -j DROP
[5:300] -A OTHER -j ACCEPT
COMMIT
";
        assert_eq!(
            traffic(save),
            Traffic {
                out_packets: 52,
                out_bytes: 40120,
                back_packets: 80,
                back_bytes: 900000,
                new_packets: 2,
                dropped_packets: 10,
                established: 4,
            }
        );
        assert_eq!(forwarded_packets(save), 133);
    }

    #[test]
    fn conntrack_scales_with_memory() {
        assert_eq!(conntrack_max_for(512 * 1024), 87_381);
        assert_eq!(conntrack_max_for(1024 * 1024), 174_762);
        assert_eq!(conntrack_max_for(64), CONNTRACK_MIN);
        assert_eq!(conntrack_max_for(u64::MAX / 2048), CONNTRACK_MAX);
    }

    #[test]
    fn nat_use_counts_per_destination() {
        let listing = "\
tcp      6 431999 ESTABLISHED src=10.20.1.10 dst=198.51.100.1 sport=40000 dport=443 src=198.51.100.1 dst=198.51.100.2 sport=443 dport=40000 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.20.1.11 dst=198.51.100.1 sport=40001 dport=443 src=198.51.100.1 dst=198.51.100.2 sport=443 dport=40001 [ASSURED] mark=0 use=1
tcp      6 100 TIME_WAIT src=10.20.1.10 dst=198.51.100.1 sport=40002 dport=80 src=198.51.100.1 dst=198.51.100.2 sport=80 dport=40002 mark=0 use=1
udp      17 29 src=10.20.1.10 dst=198.51.100.1 sport=5353 dport=443 src=198.51.100.1 dst=198.51.100.2 sport=443 dport=5353 mark=0 use=1
icmp     1 29 src=10.20.1.10 dst=198.51.100.9 type=8 code=0 id=7 src=198.51.100.9 dst=198.51.100.2 type=0 code=0 id=7 mark=0 use=1
";
        assert_eq!(
            nat_use(listing),
            NatUse {
                total: 5,
                busiest: 2,
                ..NatUse::default()
            }
        );
        assert_eq!(nat_use(""), NatUse::default());
    }

    #[test]
    fn connections_about_to_time_out_are_watched_until_gone() {
        let first = "\
tcp      6 40 ESTABLISHED src=10.20.1.10 dst=198.51.100.1 sport=40000 dport=443 src=198.51.100.1 dst=198.51.100.2 sport=443 dport=40000 [ASSURED] mark=0 use=1
tcp      6 431999 ESTABLISHED src=10.20.1.11 dst=198.51.100.1 sport=40001 dport=443 src=198.51.100.1 dst=198.51.100.2 sport=443 dport=40001 [ASSURED] mark=0 use=1
tcp      6 20 TIME_WAIT src=10.20.1.10 dst=198.51.100.1 sport=40002 dport=80 src=198.51.100.1 dst=198.51.100.2 sport=80 dport=40002 mark=0 use=1
udp      17 50 src=10.20.1.10 dst=198.51.100.1 sport=5353 dport=53 src=198.51.100.1 dst=198.51.100.2 sport=53 dport=5353 [ASSURED] mark=0 use=1
udp      17 10 src=10.20.1.10 dst=198.51.100.1 sport=5354 dport=53 [UNREPLIED] src=198.51.100.1 dst=198.51.100.2 sport=53 dport=5354 mark=0 use=1
";
        // Established with 40 s left and the UDP stream with 50 s left end within a
        // minute; the long-lived one, a closing one and an unanswered one do not count.
        let seen = nat_use_within(first, Some(60), &BTreeSet::new());
        assert_eq!(
            seen.expiring,
            BTreeSet::from([
                "tcp src=10.20.1.10 dst=198.51.100.1 sport=40000 dport=443".to_string(),
                "udp src=10.20.1.10 dst=198.51.100.1 sport=5353 dport=53".to_string(),
            ])
        );
        // A minute later the TCP one is gone; the UDP one was used again (its timeout
        // restarted) and is still there.
        let second = "\
udp      17 179 src=10.20.1.10 dst=198.51.100.1 sport=5353 dport=53 src=198.51.100.1 dst=198.51.100.2 sport=53 dport=5353 [ASSURED] mark=0 use=1
";
        let later = nat_use_within(second, Some(60), &seen.expiring);
        assert_eq!(
            later.present,
            BTreeSet::from(["udp src=10.20.1.10 dst=198.51.100.1 sport=5353 dport=53".to_string()])
        );
        assert_eq!(seen.expiring.difference(&later.present).count(), 1);
        assert!(later.expiring.is_empty());
    }

    #[test]
    fn port_range_parsing() {
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range("32768\t60999"), Some((32768, 60999)));
        assert_eq!(parse_port_range("80 90"), None);
        assert_eq!(parse_port_range("2000 1000"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
    }
}
