//! The VXLAN link between the pair, and the check of the holder's forwarding sent
//! through it.

use super::*;

/// The overlay addresses `(ours, the peer's)` and the link's /30.
pub fn overlay_addresses(me: Ipv4Addr, peer: Ipv4Addr) -> (Ipv4Addr, Ipv4Addr, Ipv4Net) {
    let base = u32::from(OVERLAY_NET);
    let (a, b) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
    let net = Ipv4Net::new(OVERLAY_NET, 30).expect("a /30");
    if me < peer { (a, b, net) } else { (b, a, net) }
}

/// Makes the VXLAN link to `peer` (idempotent for the same peer); returns its /30.
pub async fn ensure_overlay(
    iface: &str,
    me: Ipv4Addr,
    peer: Ipv4Addr,
    port: u16,
) -> Result<Ipv4Net, String> {
    let (mine, theirs, net) = overlay_addresses(me, peer);
    // A link that is already right (natd restarted) is kept as it is: recreating it
    // would fail the peer's checks through us for a moment, and a standby could take
    // over from a holder that forwards.
    let script = format!(
        "if ip -d -o link show {OVERLAY_DEV} 2>/dev/null | grep -q 'vxlan id {OVERLAY_VNI} remote {peer} local {me} dev {iface} .*dstport {port} ' \
            && ip -o addr show dev {OVERLAY_DEV} | grep -q ' {mine}/30 '; then \
           ip link set {OVERLAY_DEV} up; \
         else \
           ip link del {OVERLAY_DEV} 2>/dev/null; \
           ip link add {OVERLAY_DEV} type vxlan id {OVERLAY_VNI} local {me} remote {peer} dstport {port} dev {iface} && \
           ip addr add {mine}/30 dev {OVERLAY_DEV} && \
           ip link set {OVERLAY_DEV} up; \
         fi && \
         echo 0 > /proc/sys/net/ipv4/conf/{OVERLAY_DEV}/rp_filter && \
         ip route replace default via {theirs} dev {OVERLAY_DEV} table {OVERLAY_TABLE} && \
         if ! ip rule show priority {OVERLAY_TABLE} | grep -q 'oif {OVERLAY_DEV} lookup {OVERLAY_TABLE}'; then \
           ip rule del priority {OVERLAY_TABLE} 2>/dev/null; \
           ip rule add oif {OVERLAY_DEV} lookup {OVERLAY_TABLE} priority {OVERLAY_TABLE}; \
         fi"
    );
    let out = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .await
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(net)
    } else {
        Err(format!(
            "VXLAN link to {peer}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The overlay link's /30 as a previous natd left it (the link is kept across
/// restarts): the first ruleset of a restarted natd keeps forwarding what the peer's
/// checks send over it, so the standby never sees a live holder fail them.
pub fn overlay_left() -> Option<Ipv4Net> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        if a.interface_name != OVERLAY_DEV {
            return None;
        }
        let ip = a.address?.as_sockaddr_in()?.ip();
        let mask = a.netmask?.as_sockaddr_in()?.ip();
        let prefix = u32::from(mask).count_ones() as u8;
        Ipv4Net::new(ip, prefix).ok().map(|n| n.trunc())
    })
}

/// Whether the overlay link is still there.
pub fn overlay_present() -> bool {
    // Asked of the kernel, not of /sys/class/net (see kernel::interface_with_mac).
    nix::net::if_::if_nametoindex(OVERLAY_DEV).is_ok()
}

/// What of the overlay is missing, in words; empty when the link, its routing rule and
/// its route through the holder are all in place. A rule gone alone is the dangerous
/// case: a check bound to the link would then leave by the main table (straight out,
/// not through the holder) and pass while the holder is dead. systemd-networkd removes
/// routing rules it did not make on a reload (Amazon Linux 2023's amazon-ec2-net-utils
/// reloads it when addresses change), so natd checks all three every pass.
pub async fn overlay_missing() -> Vec<&'static str> {
    if !overlay_present() {
        return vec!["link"];
    }
    let ip = |args: Vec<String>| async move {
        tokio::process::Command::new("ip")
            .args(&args)
            .output()
            .await
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let mut missing = Vec::new();
    let rules = ip(vec![
        "rule".into(),
        "show".into(),
        "priority".into(),
        OVERLAY_TABLE.to_string(),
    ])
    .await;
    if !overlay_rule_in(rules.as_deref().unwrap_or_default()) {
        missing.push("routing rule");
    }
    let routes = ip(vec![
        "route".into(),
        "show".into(),
        "table".into(),
        OVERLAY_TABLE.to_string(),
    ])
    .await;
    if !routes
        .as_deref()
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("default"))
    {
        missing.push("route through the holder");
    }
    missing
}

/// Whether `ip rule show` output has the overlay's rule.
fn overlay_rule_in(rules: &str) -> bool {
    rules.lines().any(|l| {
        l.contains(&format!("oif {OVERLAY_DEV}")) && l.contains(&format!("lookup {OVERLAY_TABLE}"))
    })
}

/// A TCP connection to `target` through the holder (over the overlay link): two at
/// once, from two source ports, so that one packet lost on the way (a neighbour entry
/// being refreshed, a busy host) is not taken for a holder that does not forward; the
/// first to connect answers.
pub async fn check_through_holder(target: SocketAddrV4, timeout: Duration) -> Result<(), String> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..2 {
        set.spawn(connect_through_holder(target, timeout));
    }
    let mut failed = String::from("no attempt ran");
    while let Some(done) = set.join_next().await {
        match done {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => failed = e,
            Err(e) => failed = e.to_string(),
        }
    }
    Err(failed)
}

/// One TCP connection to `target` bound to the overlay link.
async fn connect_through_holder(target: SocketAddrV4, timeout: Duration) -> Result<(), String> {
    crate::probe::connect(target, OVERLAY_DEV, timeout)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_rule_is_recognised_in_ip_rule_output() {
        assert!(overlay_rule_in(&format!(
            "{OVERLAY_TABLE}:\tfrom all oif {OVERLAY_DEV} lookup {OVERLAY_TABLE}\n"
        )));
        assert!(!overlay_rule_in(""));
        assert!(!overlay_rule_in(
            "0:\tfrom all lookup local\n32766:\tfrom all lookup main\n"
        ));
    }

    #[test]
    fn both_ends_agree_on_the_overlay_addresses() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::new(10, 0, 0, 6));
        let (a1, a2, n) = overlay_addresses(a, b);
        let (b1, b2, m) = overlay_addresses(b, a);
        assert_eq!((a1, a2), (b2, b1));
        assert_eq!(n, m);
        assert_ne!(a1, a2);
    }
}
