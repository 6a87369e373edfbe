//! The hot standby pair: two natd instances, each in its own Auto Scaling group of one.
//!
//! **Egress identity.** The stack's Elastic IPs (tagged `natd:egress=<stack>`, `egress_ips`
//! of them) sit on secondary private addresses of the *holder's* ENI; natd SNATs to
//! those addresses (never MASQUERADE: the mapping must be the same on both instances,
//! and survive an address moving). `AssignPrivateIpAddresses` with `AllowReassignment`
//! moves an address to the other ENI and its Elastic IP follows in the same call, so the
//! internet sees the same address before and after a failover.
//!
//! **Roles.** The holder is the instance whose ENI carries the first Elastic IP (by
//! allocation id): it takes every tagged route table and every egress address. The
//! other instance is the standby: it yields every table, keeps its kernel ready
//! (forwarding, the same SNAT rules, source/dest check off) and keeps a copy of the
//! holder's connection tracking table (conntrackd, FTFW over unicast UDP in the VPC).
//! When no instance holds the address (the first start, or the holder's ENI is gone),
//! the first instance that forwards claims it; AssociateAddress without
//! `AllowReassociation` is the lock, so two claims cannot both win.
//!
//! **Takeover.** The pair exchange heartbeats (UDP, `heartbeat_interval_ms`). The standby
//! acts when the holder is silent for `heartbeat_misses` beats, or says it no longer
//! forwards, **and** its own check finds the holder does not forward: a TCP connection
//! to a probe target (or the EC2 endpoint) sent *through the holder* over a VXLAN link
//! between the two (`overlay_port`; the holder forwards and SNATs what arrives on it like
//! traffic from the VPC). A lost heartbeat alone never moves anything. Then it commits
//! the state copy into its kernel, moves the egress addresses and replaces the default
//! route of every tagged table, all at once (the state first: make before break).
//!
//! **No flapping, no split brain.** The holder keeps the routes and the addresses while
//! it forwards: nothing but the standby's failed check moves them, and the holder itself
//! never takes them back. An instance that lost the role stays standby without a fast
//! takeover until it hears the new holder's heartbeats again (so a partition that cuts
//! every packet between the pair moves the routes at most once); it may still claim an
//! address that no one holds. A replacement starts as the standby: the address is held.
//!
//! Single-instance stacks keep the rule in [`crate::routes`] (the newest live natd keeps
//! the routes: an instance refresh launches the replacement first). A pair never uses
//! it: there, age says nothing about who forwards, and the holder is whoever holds the
//! address.

mod decide;
mod link;
mod sync;

pub use decide::*;
pub use link::*;
pub use sync::*;

use crate::aws::Cloud;
pub use crate::aws::{Egress, Member};
use crate::config::Config;
use crate::contract::pair::{Beat, beat, parse_beat};
use crate::routes::{Decision, Me, Table, Target};
use ipnet::Ipv4Net;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// The VXLAN link between the pair.
pub const OVERLAY_DEV: &str = "natd-pair";
/// Its VXLAN network identifier.
const OVERLAY_VNI: u32 = 4242;
/// The routing table (and rule priority) that sends the check through the holder.
const OVERLAY_TABLE: u32 = 4242;
/// The link's /30: the instance with the lower private address takes the first host.
const OVERLAY_NET: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 0);
/// After a check found the holder forwarding, the next one waits at least this long
/// (a partition that drops only heartbeats is checked once a second, not every beat).
const CHECK_SPACING: Duration = Duration::from_secs(1);
/// While heartbeats are in order the standby still checks the holder's forwarding this
/// often: a holder that beats but no longer forwards (its forwarding broken where it
/// cannot see) is taken over after [`ROUTINE_FAILURES`] failed checks in a row.
const ROUTINE_EVERY: Duration = Duration::from_secs(2);
/// Failed routine checks in a row (each with the standby's own path and the link
/// between the two proven at the same moment) before a takeover: with the check every
/// [`ROUTINE_EVERY`] and the second one [`heartbeat_misses`] beats after the first, a
/// holder that stops forwarding while it beats is taken over within about 3 s.
///
/// [`heartbeat_misses`]: crate::config::Config::heartbeat_misses
const ROUTINE_FAILURES: u32 = 2;
/// After losing the role, an instance takes it back on failed routine checks only this
/// much later: two instances whose checks through each other fail (and nothing else
/// does) hand the routes over at most once a minute, never back and forth.
const ROUTINE_HOLD_DOWN: Duration = Duration::from_secs(60);
/// A standby whose check through this holder has never once passed (a new link, a
/// holder whose reads do not show us yet and so beats and tunnels to someone else)
/// does not take a failed check for a holder that does not forward until the holder
/// has been silent this long: the check path, not the holder, is the likelier fault.
const UNPROVEN_SILENCE: Duration = Duration::from_secs(10);
/// The TCP port the standby connects to on the holder's end of the link to prove the
/// link itself: nothing listens there, and the reset that comes back is the proof.
const LINK_PROOF_PORT: u16 = 9;
/// The longest a check through the holder waits for its connection.
const CHECK_TIMEOUT: Duration = Duration::from_millis(250);
/// After a takeover, how long natd waits at most for IMDS to list the moved addresses
/// on its interface and for the first forwarded packet (AWS: the remap is
/// asynchronous; confirm it through IMDS `local-ipv4s`).
const CONFIRM_WITHIN: Duration = Duration::from_secs(15);
/// How often it looks while it waits.
const CONFIRM_EVERY: Duration = Duration::from_millis(50);
/// Longest a conntrackd control command may take.
const CTL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the heartbeat loop needs to act alone.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The configuration.
    pub cfg: Config,
    /// Our instance.
    pub instance_id: String,
    /// Our ENI.
    pub eni: String,
    /// EC2.
    pub cloud: Cloud,
    /// The shared view.
    pub view: Shared,
    /// The interface of our ENI: the standby's own path (the witness) leaves by it.
    pub iface: String,
    /// IMDS, where a takeover confirms that the moved addresses have arrived.
    pub imds: crate::imds::Imds,
    /// Our interface's MAC (its IMDS path).
    pub mac: String,
    /// conntrackd.
    pub sync: Arc<Sync>,
    /// Where the check through the holder connects: the probe targets...
    pub targets: Vec<SocketAddrV4>,
    /// ... or, without them, the first of these AWS endpoints (`host:port`) that
    /// resolves to an address outside the VPC: the EC2 endpoint natd must reach anyway
    /// first. In a VPC with an interface endpoint (private DNS) for a service, its name
    /// resolves to the endpoint's private addresses, which the check through the holder
    /// can never reach: those names are passed over ([`public_target`]).
    pub endpoints: Vec<String>,
    /// The VPC's CIDRs (what an interface endpoint's address is in).
    pub vpc_cidrs: Vec<ipnet::Ipv4Net>,
    /// Whether the endpoints were given (aws_endpoint_url): then they are used as they
    /// resolve.
    pub endpoint_given: bool,
}

/// The AWS endpoints the check through the holder may connect to when no probe target
/// is configured, in order: EC2 (which natd reaches anyway), then services whose
/// public names an interface endpoint of EC2 does not capture.
pub fn default_check_endpoints(region: &str) -> Vec<String> {
    ["ec2", "sts", "autoscaling", "s3"]
        .iter()
        .map(|s| format!("{s}.{region}.amazonaws.com:443"))
        .collect()
}

/// The first resolved address (by endpoint, in order) that a connection through the
/// holder's NAT can test: outside the VPC's CIDRs and outside the private and shared
/// ranges an interface endpoint's addresses come from. With `given`, the first address
/// as it resolves (an endpoint URL the operator chose).
pub fn public_target(
    resolved: &[(String, Vec<SocketAddrV4>)],
    vpc_cidrs: &[ipnet::Ipv4Net],
    given: bool,
) -> Option<(String, SocketAddrV4)> {
    let cgnat = ipnet::Ipv4Net::new(Ipv4Addr::new(100, 64, 0, 0), 10).ok();
    resolved.iter().find_map(|(name, addrs)| {
        addrs
            .iter()
            .find(|a| {
                given
                    || !(a.ip().is_private()
                        || a.ip().is_loopback()
                        || a.ip().is_link_local()
                        || cgnat.is_some_and(|n| n.contains(a.ip()))
                        || vpc_cidrs.iter().any(|n| n.contains(a.ip())))
            })
            .map(|a| (name.clone(), *a))
    })
}

/// The heartbeat loop: sends our beat to the peer every interval, takes the peer's,
/// and runs the check (and the takeover) when one is due. Runs for natd's lifetime.
pub async fn run(ctx: Ctx) {
    let port = ctx.cfg.heartbeat_port;
    let sock = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).await {
        Ok(s) => s,
        Err(e) => {
            error!("pair: cannot listen for heartbeats on UDP {port}: {e}; no fast takeover");
            return;
        }
    };
    let mut tick = tokio::time::interval(ctx.cfg.heartbeat_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            _ = tick.tick() => {
                seq += 1;
                let now = Instant::now();
                let (peer, msg, due) = {
                    let mut v = ctx.view.lock().expect("pair view");
                    let due = check_due(&v, now, &ctx.cfg);
                    if due.is_some() {
                        v.busy = true;
                    }
                    (
                        v.peer.as_ref().map(|p| p.ip),
                        beat(&ctx.instance_id, seq, v.holder, v.handing_over, v.forwards, v.held),
                        due,
                    )
                };
                if let Some(ip) = peer {
                    let _ = sock.send_to(msg.as_bytes(), (ip, port)).await;
                }
                if let Some(due) = due {
                    tokio::spawn(check_and_take_over(ctx.clone(), due, now));
                }
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let Some(Beat { instance: id, holder, handing_over, forwards, held }) = std::str::from_utf8(&buf[..n]).ok().and_then(parse_beat) else {
                    continue;
                };
                let mut v = ctx.view.lock().expect("pair view");
                let ours = v.peer.as_ref().is_some_and(|p| p.instance_id == id && std::net::IpAddr::V4(p.ip) == from.ip());
                if !ours {
                    continue;
                }
                if v.lost_role {
                    info!("pair: heard {id} again; fast takeover re-armed");
                    v.lost_role = false;
                }
                if v.silent_logged {
                    v.silent_logged = false;
                    info!("pair: heartbeats from {id} again");
                }
                v.last_beat = Some(Instant::now());
                if holder && !v.peer_says_holder {
                    v.peer_claim_heard = v.last_beat;
                }
                v.peer_says_holder = holder;
                v.peer_hands_over = handing_over;
                v.peer_says_forwards = forwards;
                if held.is_some() {
                    v.peer_held = held;
                }
                v.beats += 1;
            }
        }
    }
}

/// Checks the holder through the overlay; takes over when it does not forward.
async fn check_and_take_over(ctx: Ctx, due: Due, decided: Instant) {
    let timeout = Duration::from_millis(ctx.cfg.probe_timeout_ms).min(CHECK_TIMEOUT);
    let routine = due.routine();
    if due == Due::Handover {
        // Planned: the holder forwards until the routes have moved; no check.
        return take_over(ctx, due.to_string(), decided, Vec::new()).await;
    }
    let reason = due.to_string();
    let mut targets = ctx.targets.clone();
    if targets.is_empty() {
        let mut resolved = Vec::new();
        for name in &ctx.endpoints {
            let found = tokio::time::timeout(timeout, tokio::net::lookup_host(name.as_str())).await;
            let addrs: Vec<SocketAddrV4> = match found {
                Ok(Ok(addrs)) => addrs
                    .filter_map(|a| match a {
                        std::net::SocketAddr::V4(a) => Some(a),
                        std::net::SocketAddr::V6(_) => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let done = public_target(
                &[(name.clone(), addrs.clone())],
                &ctx.vpc_cidrs,
                ctx.endpoint_given,
            )
            .is_some();
            resolved.push((name.clone(), addrs));
            if done {
                break;
            }
        }
        let picked = public_target(&resolved, &ctx.vpc_cidrs, ctx.endpoint_given);
        if let Some((name, _)) = &picked
            && ctx.endpoints.first() != Some(name)
        {
            debug!(
                "pair: {} resolves inside the VPC (an interface endpoint); checking the holder with {name}",
                ctx.endpoints
                    .first()
                    .map(String::as_str)
                    .unwrap_or_default()
            );
        }
        targets = picked.map(|(_, a)| a).into_iter().collect();
        if targets.is_empty() {
            // Without a target the holder's forwarding cannot be checked: never move
            // on silence alone.
            let mut v = ctx.view.lock().expect("pair view");
            v.busy = false;
            v.last_check_ok = Some(Instant::now());
            v.last_check = v.last_check_ok;
            warn!(
                "pair: {reason}, but none of {} resolves to an address outside the VPC: cannot check the holder (set probe_targets); staying standby",
                ctx.endpoints.join(", ")
            );
            return;
        }
    }
    if !overlay_missing().await.is_empty() {
        // Not a verdict on the holder: without the link (its device, rule and route)
        // there is no check; the data pass repairs it.
        ctx.view.lock().expect("pair view").busy = false;
        return;
    }
    // The holder's end of the link, and (when it is silent) whether its kernel still
    // answers there, asked beside the check so a dead holder costs no extra wait.
    let holder_end = {
        let v = ctx.view.lock().expect("pair view");
        v.me_ip
            .zip(v.peer.as_ref().map(|p| p.ip))
            .map(|(me, peer)| overlay_addresses(me, peer).1)
    };
    let link_answers = |timeout: Duration| async move {
        match holder_end {
            Some(ip) => {
                crate::probe::answers(SocketAddrV4::new(ip, LINK_PROOF_PORT), OVERLAY_DEV, timeout)
                    .await
            }
            None => false,
        }
    };
    let alive = (!routine).then(|| tokio::spawn(link_answers(timeout)));
    let mut failures = Vec::new();
    let mut passed = None;
    for t in &targets {
        match check_through_holder(*t, timeout).await {
            Ok(()) => {
                passed = Some(*t);
                break;
            }
            Err(e) => failures.push(format!("{t}: {e}")),
        }
    }
    // A silent holder whose kernel still answers on the link is alive: its natd may be
    // restarting (a crash, an upgrade) while it forwards, and a check that timed out on
    // a loaded machine is not proof enough. Once more, with twice the time, before
    // moving anything. (A dead holder's end does not answer: no second check.)
    if passed.is_none()
        && let Some(alive) = alive
        && alive.await.unwrap_or(false)
    {
        let slower = (timeout * 2).min(CHECK_TIMEOUT * 2);
        for t in &targets {
            match check_through_holder(*t, slower).await {
                Ok(()) => {
                    passed = Some(*t);
                    break;
                }
                Err(e) => failures.push(format!("{t} (again, {} ms): {e}", slower.as_millis())),
            }
        }
    }
    if let Some(t) = passed {
        let mut v = ctx.view.lock().expect("pair view");
        v.last_check = Some(Instant::now());
        v.busy = false;
        let through = v.peer.as_ref().map(|p| p.instance_id.clone());
        if v.proven_through != through {
            info!(
                "pair: a check through {} passed (to {t}): the check path is proven",
                through.as_deref().unwrap_or("the holder")
            );
            v.proven_through = through;
        }
        v.not_acted = None;
        if v.check_failures > 0 {
            info!("pair: the holder forwards again (a check through it succeeded)");
            v.check_failures = 0;
        }
        if routine {
            return;
        }
        v.last_check_ok = v.last_check;
        if !v.silent_logged {
            v.silent_logged = true;
            warn!(
                "pair: {reason}, but it forwards (a connection to {t} through it succeeded{}): staying standby",
                if failures.is_empty() {
                    String::new()
                } else {
                    format!(" after {}", failures.join("; "))
                }
            );
        }
        return;
    }
    // A routine check that was under way when the holder fell silent (it died during
    // the check) is judged as the silence it now is: the takeover must not wait for
    // the next check.
    let (due, routine) = {
        let v = ctx.view.lock().expect("pair view");
        let limit = ctx.cfg.heartbeat_interval() * ctx.cfg.heartbeat_misses;
        match (routine, v.silence(Instant::now()), v.peer.as_ref()) {
            (true, Some(silence), Some(p)) if silence >= limit => {
                (Due::silent(&p.instance_id, silence, &ctx.cfg), false)
            }
            _ => (due, routine),
        }
    };
    let reason = due.to_string();
    // The check failed. For a routine check (the holder beats and says it forwards)
    // learn, in the same moment, whether our own path to the target works and whether
    // the holder's end of the link answers: without both, the fault is not the
    // holder's.
    let evidence = if routine {
        let own = targets.first().copied();
        let (own_path, link) = tokio::join!(
            async {
                match own {
                    Some(t) => crate::probe::connect(t, &ctx.iface, timeout).await.is_ok(),
                    None => false,
                }
            },
            link_answers(timeout)
        );
        Evidence { own_path, link }
    } else {
        Evidence {
            own_path: true,
            link: true,
        }
    };
    {
        let mut v = ctx.view.lock().expect("pair view");
        let now = Instant::now();
        v.last_check = Some(now);
        match judge_failed_check(&due, &v, evidence, now) {
            Ok(()) => {
                v.check_failures = 0;
                v.not_acted = None;
            }
            Err(why) => {
                if routine && matches!(why, NotActed::FirstFailure) {
                    v.check_failures += 1;
                } else if routine {
                    // Our evidence does not hold: start counting afresh.
                    v.check_failures = 0;
                }
                if !routine {
                    // Silence goes on: the next check in [`CHECK_SPACING`], not at the
                    // next beat.
                    v.last_check_ok = Some(now);
                }
                if v.not_acted != Some(why) {
                    warn!(
                        "pair: {reason}: checks through {} fail ({}), not taking over: {why}",
                        v.peer
                            .as_ref()
                            .map(|p| p.instance_id.as_str())
                            .unwrap_or("the holder"),
                        failures.join("; ")
                    );
                    v.not_acted = Some(why);
                }
                v.busy = false;
                return;
            }
        }
    }
    let reason = if routine {
        format!(
            "{reason}: it beats and says it forwards, but {ROUTINE_FAILURES} checks through it failed in a row while our own path and the link to it worked"
        )
    } else {
        reason
    };
    take_over(ctx, reason, decided, failures).await;
}

/// Brings every egress Elastic IP to `eni`: the secondary addresses they sit on move
/// here (`AllowReassignment`, the Elastic IPs with them) when they can; when they
/// cannot (another subnet: a pair spread over two AZs), each Elastic IP is associated
/// with a new secondary address of ours instead: the same public address, but the
/// connections on the old one are lost. Says what it did.
pub async fn bring_egress_here(
    cloud: &Cloud,
    eni: &str,
    egress: &mut [Egress],
) -> Result<String, crate::aws::Error> {
    let moving: Vec<Ipv4Addr> = egress
        .iter()
        .filter(|e| e.eni.as_deref() != Some(eni))
        .filter_map(|e| e.private_ip.filter(|_| e.eni.is_some()))
        .collect();
    let list = |ips: &[Ipv4Addr]| {
        ips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let moved = if moving.is_empty() {
        Ok(())
    } else {
        cloud.move_private_ips(eni, &moving).await
    };
    match moved {
        Ok(()) => {
            for e in egress
                .iter_mut()
                .filter(|e| e.private_ip.is_some_and(|ip| moving.contains(&ip)))
            {
                e.eni = Some(eni.to_string());
            }
            if egress
                .iter()
                .all(|e| e.eni.as_deref() == Some(eni) && e.private_ip.is_some())
            {
                return Ok(format!(
                    "egress address(es) {} now on {eni}, their Elastic IP(s) with them",
                    list(&moving)
                ));
            }
        }
        Err(e) => warn!(
            "pair: the egress addresses cannot move to {eni} ({e}); associating the Elastic IP(s) with new addresses here (open connections on them are lost)"
        ),
    }
    let mut reassociated = Vec::new();
    for e in egress
        .iter_mut()
        .filter(|e| e.eni.as_deref() != Some(eni) || e.private_ip.is_none())
    {
        let ip = cloud
            .new_private_ips(eni, 1)
            .await?
            .first()
            .copied()
            .ok_or_else(|| crate::aws::Error::NoSuchAddress(format!("a new address on {eni}")))?;
        cloud
            .associate_address_at(&e.allocation_id, eni, ip, true)
            .await?;
        e.eni = Some(eni.to_string());
        e.private_ip = Some(ip);
        reassociated.push(format!("{} on {ip}", e.public_ip));
    }
    Ok(format!(
        "Elastic IP(s) {} associated with {eni}",
        reassociated.join(", ")
    ))
}

/// Commits the peer's state, moves the egress addresses and every route here.
async fn take_over(ctx: Ctx, reason: String, decided: Instant, failures: Vec<String>) {
    let (tables, peer) = {
        let v = ctx.view.lock().expect("pair view");
        (v.tables.clone(), v.peer.clone())
    };
    let peer = peer.map(|p| p.instance_id).unwrap_or_default();
    if failures.is_empty() {
        info!("pair: taking over from {peer}: {reason}");
    } else {
        warn!(
            "pair: taking over from {peer}: {reason}, and it does not forward ({})",
            failures.join("; ")
        );
    }
    // The forward chain's count before anything moves, read beside the commit (not
    // before it: the takeover's path waits for nothing it does not need).
    let (forwarded_before, committed) = tokio::join!(forwarded_packets(), ctx.sync.ctl(&["-c"]));
    match &committed {
        Ok(_) => info!(
            "pair: connection state committed into the kernel ({} ms after the decision)",
            decided.elapsed().as_millis()
        ),
        Err(e) => error!("pair: could not commit the peer's connection state: {e}"),
    }
    let eni = ctx.eni.clone();
    let mut egress = ctx.view.lock().expect("pair view").egress.clone();
    let moved = bring_egress_here(&ctx.cloud, &eni, &mut egress);
    let routes = futures_util::future::join_all(tables.iter().map(|t| {
        let (cloud, eni) = (ctx.cloud.clone(), eni.clone());
        async move { (t.clone(), cloud.write_route(t, &eni, false).await) }
    }));
    let (moved, routes) = tokio::join!(moved, routes);
    let took = decided.elapsed();
    let ok_tables = routes.iter().filter(|(_, r)| r.is_ok()).count();
    for (t, r) in &routes {
        match r {
            Ok(()) => info!("route table {t}: 0.0.0.0/0 now targets {eni} (took over from {peer})"),
            Err(e) => error!("pair: route table {t}: {e}"),
        }
    }
    let mut v = ctx.view.lock().expect("pair view");
    v.busy = false;
    match moved {
        Ok(how) => {
            info!("pair: {how}; takeover took {} ms", took.as_millis());
            v.holder = true;
            v.peer_holds = false;
            v.egress = egress;
            v.took_at = Some(Instant::now());
            v.moved_here = v.took_at;
            v.last_takeover = Some(Takeover {
                at: SystemTime::now() - took,
                took,
                tables: ok_tables,
                reason,
                confirmed: None,
                flowing: None,
            });
            let (ctx, ips) = (ctx.clone(), v.egress_ips());
            tokio::spawn(confirm(ctx, ips, decided, forwarded_before));
        }
        Err(e) => error!("pair: could not move the egress addresses: {e}; retrying"),
    }
    drop(v);
    // Our state is now the truth: resynchronise the caches and send it all to the peer
    // (the replacement, when it comes).
    let sync = ctx.sync.clone();
    tokio::spawn(async move {
        for args in [["-f"], ["-R"], ["-B"]] {
            if let Err(e) = sync.ctl(&args).await {
                warn!("pair: {e}");
            }
        }
    });
}

/// After a takeover: waits (bounded) until IMDS lists every moved address on our
/// interface, and until the first packet from the VPC is forwarded here, and says how
/// long each took from the decision. The takeover is counted done, in the health report
/// and the log, at the confirmation, not at the API's answer.
async fn confirm(ctx: Ctx, ips: Vec<Ipv4Addr>, decided: Instant, before: Option<u64>) {
    let (mut confirmed, mut flowing) = (None, None);
    let deadline = decided + CONFIRM_WITHIN;
    while (confirmed.is_none() || flowing.is_none()) && Instant::now() < deadline {
        if confirmed.is_none()
            && let Ok(listed) = ctx.imds.local_ipv4s(&ctx.mac).await
            && ips.iter().all(|ip| listed.contains(ip))
        {
            confirmed = Some(decided.elapsed());
        }
        if flowing.is_none()
            && let (Some(b), Some(now)) = (before, forwarded_packets().await)
            && now > b
        {
            flowing = Some(decided.elapsed());
        }
        tokio::time::sleep(CONFIRM_EVERY).await;
    }
    let ms = |d: Option<Duration>| {
        d.map(|d| format!("{} ms", d.as_millis()))
            .unwrap_or_else(|| format!("not within {} s", CONFIRM_WITHIN.as_secs()))
    };
    let said = format!(
        "pair: takeover confirmed: IMDS lists the egress address(es) on our interface after {}; traffic from the VPC forwarded here after {} (from the decision)",
        ms(confirmed),
        ms(flowing)
    );
    if confirmed.is_some() {
        info!("{said}");
    } else {
        warn!("{said}");
    }
    let mut v = ctx.view.lock().expect("pair view");
    if let Some(t) = v.last_takeover.as_mut() {
        t.confirmed = confirmed;
        t.flowing = flowing;
    }
}

/// Packets natd's forward chain has passed (every packet forwarded from the VPC crosses
/// it), or `None` when iptables cannot say.
async fn forwarded_packets() -> Option<u64> {
    let out = tokio::process::Command::new("iptables-save")
        .args(["-c", "-t", "filter"])
        .output()
        .await
        .ok()
        .filter(|o| o.status.success())?;
    Some(crate::kernel::forwarded_packets(&String::from_utf8_lossy(
        &out.stdout,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_through_the_holder_never_targets_an_interface_endpoint() {
        let vpc: Vec<Ipv4Net> = vec!["10.20.0.0/16".parse().expect("cidr")];
        let a = |s: &str| s.parse::<SocketAddrV4>().expect("addr");
        let ec2 = "ec2.eu-west-1.amazonaws.com:443".to_string();
        let sts = "sts.eu-west-1.amazonaws.com:443".to_string();
        // EC2's name resolves to an interface endpoint of the VPC: STS's public one wins.
        let resolved = vec![
            (ec2.clone(), vec![a("10.20.3.17:443"), a("10.20.4.9:443")]),
            (sts.clone(), vec![a("52.94.5.100:443")]),
        ];
        assert_eq!(
            public_target(&resolved, &vpc, false),
            Some((sts.clone(), a("52.94.5.100:443")))
        );
        // Public: EC2 itself.
        let resolved = vec![(ec2.clone(), vec![a("52.95.120.1:443")])];
        assert_eq!(
            public_target(&resolved, &vpc, false).map(|(n, _)| n),
            Some(ec2.clone())
        );
        // Private ranges outside the VPC's CIDRs are endpoints too (a peered or shared
        // VPC's), and CGNAT space; nothing public: no target.
        let resolved = vec![
            (ec2.clone(), vec![a("172.31.0.5:443"), a("100.64.1.1:443")]),
            (sts, vec![]),
        ];
        assert_eq!(public_target(&resolved, &vpc, false), None);
        // An endpoint URL the operator gave is used as it resolves.
        let resolved = vec![(ec2, vec![a("10.20.0.2:443")])];
        assert!(public_target(&resolved, &vpc, true).is_some());
        assert_eq!(
            default_check_endpoints("eu-west-1")[0],
            "ec2.eu-west-1.amazonaws.com:443"
        );
    }
}
