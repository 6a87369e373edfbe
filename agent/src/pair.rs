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

/// The last takeover this instance made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takeover {
    /// When it was decided.
    pub at: SystemTime,
    /// From the decision to the last call's answer.
    pub took: Duration,
    /// Tables whose route moved.
    pub tables: usize,
    /// Why.
    pub reason: String,
    /// From the decision until IMDS listed every moved address on our interface (the
    /// remap done, as AWS advises to confirm it); `None` until then, or when it never
    /// did within [`CONFIRM_WITHIN`].
    pub confirmed: Option<Duration>,
    /// From the decision until the first packet from the VPC was forwarded here (traffic
    /// really flows the new way).
    pub flowing: Option<Duration>,
}

/// What the pair's two halves (the control pass, the heartbeat loop) share.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// Our primary private address, once read.
    pub me_ip: Option<Ipv4Addr>,
    /// The other instance.
    pub peer: Option<Member>,
    /// When the peer last changed (another instance, or the first one found).
    pub peer_since: Option<Instant>,
    /// The stack's Elastic IPs (first: the lock), as last read or moved.
    pub egress: Vec<Egress>,
    /// Tagged route tables, as last read.
    pub tables: Vec<String>,
    /// We hold the address (and so the routes).
    pub holder: bool,
    /// The peer holds the address.
    pub peer_holds: bool,
    /// Our data plane forwards.
    pub forwards: bool,
    /// We can check the holder and take over: the overlay link is up and conntrackd
    /// runs.
    pub ready: bool,
    /// We lost the role to the peer and have not heard it since.
    pub lost_role: bool,
    /// The last heartbeat from the peer, and what it said.
    pub last_beat: Option<Instant>,
    /// The peer says it holds the address.
    pub peer_says_holder: bool,
    /// The peer says it forwards.
    pub peer_says_forwards: bool,
    /// The peer (the holder) hands over: take over now, without a check.
    pub peer_hands_over: bool,
    /// We hold and were asked to hand over: our heartbeats say so.
    pub handing_over: bool,
    /// Heartbeats received.
    pub beats: u64,
    /// A check (and maybe a takeover) is running.
    pub busy: bool,
    /// The last check made because the holder was silent (or said it failed) that
    /// found it forwarding: the next such check waits [`CHECK_SPACING`]. Routine checks
    /// never set it, so one just before the holder dies does not delay the takeover.
    pub last_check_ok: Option<Instant>,
    /// The last check through the holder, whatever it found.
    pub last_check: Option<Instant>,
    /// Routine checks failed in a row (counted only while our own path and the link
    /// work: see [`judge_failed_check`]).
    pub check_failures: u32,
    /// The peer a check through which last passed: the check path through the current
    /// holder is proven while this is its instance id.
    pub proven_through: Option<String>,
    /// When we last lost the role to the peer.
    pub lost_role_at: Option<Instant>,
    /// Why the last failed check was not taken for a holder that does not forward (said
    /// once, when it changes).
    pub not_acted: Option<NotActed>,
    /// The last takeover we made, and when our fast path last acted.
    pub last_takeover: Option<Takeover>,
    /// When the fast path last moved things (the control pass must not undo it with
    /// what it read before).
    pub took_at: Option<Instant>,
    /// When we last moved the lock (the first egress address) to our ENI: a takeover or
    /// a claim. Reads made within the consistency window of it may not show it yet.
    pub moved_here: Option<Instant>,
    /// When the peer's heartbeats began to say it holds (since they last said it
    /// stands by): its claim, first hand, which reads may not show yet.
    pub peer_claim_heard: Option<Instant>,
    /// While we hold: when a pass first read a tagged route on the peer. A holder takes
    /// such a route back only once reads have had the consistency window to show who
    /// holds (the peer may have taken over, and the address read not yet show it).
    pub peer_route_seen: Option<Instant>,
    /// EC2's egress addresses have been read at least once (until then the kernel keeps
    /// what the previous run left).
    pub egress_read: bool,
    /// The egress addresses the kernel's rules SNAT new connections to, as last applied
    /// (empty: it forwards nothing new). The holder moves routes here only once the
    /// lock's address is among them.
    pub kernel_egress: Vec<Ipv4Addr>,
    /// Connections of the peer held in conntrackd's external cache, as last asked.
    pub synced: Option<u64>,
    /// Connections this instance forwards that conntrackd tracks (its internal cache).
    pub held: Option<u64>,
    /// The peer's `held`, from its last heartbeat that said it.
    pub peer_held: Option<u64>,
    /// On the standby: how far its copy is behind the holder's table.
    pub lag: SyncLag,
    /// On the standby: when it last asked the holder for a full resync.
    pub resync_asked: Option<Instant>,
    /// The role was logged once.
    pub role_logged: bool,
    /// Whether the "holder forwards though silent" note was logged.
    pub silent_logged: bool,
}

impl View {
    /// The egress private addresses known.
    pub fn egress_ips(&self) -> Vec<Ipv4Addr> {
        self.egress.iter().filter_map(|e| e.private_ip).collect()
    }

    /// How long the peer has been silent (`None`: never heard).
    pub fn silence(&self, now: Instant) -> Option<Duration> {
        self.last_beat.map(|t| now.saturating_duration_since(t))
    }

    /// Whether a check through the current peer has passed since it became our peer.
    pub fn proven(&self) -> bool {
        self.peer
            .as_ref()
            .is_some_and(|p| self.proven_through.as_deref() == Some(p.instance_id.as_str()))
    }
}

/// The shared view.
pub type Shared = Arc<Mutex<View>>;

/// The peer among the stack's instances: the one holding the address if any, else the
/// newest other one (during a replacement the one going away is older).
pub fn choose_peer(members: &[Member], me: &str, egress: &[Egress]) -> Option<Member> {
    let others: Vec<&Member> = members.iter().filter(|m| m.instance_id != me).collect();
    let lock = egress.first().and_then(|e| e.eni.as_deref());
    if let Some(h) = others.iter().find(|m| Some(m.eni.as_str()) == lock) {
        return Some((*h).clone());
    }
    others
        .into_iter()
        .max_by(|a, b| (a.launch_time, &a.instance_id).cmp(&(b.launch_time, &b.instance_id)))
        .cloned()
}

/// Who holds the address, as a control pass should believe it: EC2's answer, unless a
/// move it does not show yet happened within `window` (EC2's reads are eventually
/// consistent) of the moment the pass began reading. The latest first-hand event wins:
/// our own move of the lock here, or the peer's heartbeats starting to say it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Belief {
    /// What EC2 answered.
    Read,
    /// We moved the lock here after the read could show it: we hold (with the
    /// addresses as we left them).
    OursNotYetRead,
    /// The peer said it took the address after the read could show it: it holds.
    PeersNotYetRead,
}

/// See [`Belief`]: `read_at` is when the pass began reading.
pub fn believe(
    read_holder: bool,
    read_peer_holds: bool,
    read_at: Instant,
    view: &View,
    window: Duration,
) -> Belief {
    let recent = |t: Option<Instant>| t.filter(|t| read_at < *t + window);
    let ours = recent(view.moved_here);
    let theirs = recent(view.peer_claim_heard).filter(|_| view.peer_says_holder);
    match (ours, theirs) {
        (Some(o), Some(t)) if t > o && !read_peer_holds => Belief::PeersNotYetRead,
        (Some(o), Some(t)) if o >= t && !read_holder => Belief::OursNotYetRead,
        (Some(_), None) if !read_holder => Belief::OursNotYetRead,
        (None, Some(_)) if !read_peer_holds => Belief::PeersNotYetRead,
        _ => Belief::Read,
    }
}

/// Whether a holder may write the default route of tables it read on the peer: only
/// once a read made `window` after it first saw them there (`seen`) still says we hold.
/// Before that the peer may have taken over and the address read not show it yet; a
/// holder never takes routes back from a peer that did.
pub fn may_take_from_peer(seen: Option<Instant>, read_at: Instant, window: Duration) -> bool {
    seen.is_some_and(|s| read_at >= s + window)
}

/// Whether we claim an address no one holds: when there is no peer, when the peer is
/// silent or says it does not forward, or, both forwarding, when our id is the lower.
pub fn should_claim(
    me: &str,
    peer: Option<&Member>,
    view: &View,
    now: Instant,
    cfg: &Config,
) -> bool {
    let Some(peer) = peer else { return true };
    let silent = view
        .silence(now)
        .is_none_or(|s| s >= cfg.heartbeat_interval() * cfg.heartbeat_misses);
    silent || !view.peer_says_forwards || me < peer.instance_id.as_str()
}

/// Whether the table's default route targets the peer.
pub fn on_peer(t: &Table, peer: &Member) -> bool {
    t.default_route.as_ref().is_some_and(|r| {
        !r.blackhole
            && match &r.target {
                Target::Interface(e) => *e == peer.eni,
                Target::Instance(i) => *i == peer.instance_id,
                Target::Other(_) => false,
            }
    })
}

/// The route decision for a pair: the holder takes every table, the standby none; a
/// table on the peer only when `take_from_peer` (see [`may_take_from_peer`]).
pub fn route_plan(
    me: &Me,
    tables: &[Table],
    holder: bool,
    peer: Option<&Member>,
    take_from_peer: bool,
) -> Vec<(String, Decision)> {
    let mut out = Vec::new();
    for t in tables {
        let ours = t.default_route.as_ref().is_some_and(|r| {
            !r.blackhole
                && match &r.target {
                    Target::Interface(e) => *e == me.eni_id,
                    Target::Instance(i) => *i == me.instance_id,
                    Target::Other(_) => false,
                }
        });
        let on_peer = peer.is_some_and(|p| on_peer(t, p));
        let d = if ours {
            Decision::Ours
        } else if holder && on_peer && !take_from_peer {
            Decision::Yield {
                holder: format!(
                    "{} (the peer; until EC2's reads can show who holds the address)",
                    peer.map(|p| p.instance_id.as_str()).unwrap_or_default()
                ),
            }
        } else if holder {
            match &t.default_route {
                None => Decision::Create,
                Some(r) => Decision::Replace {
                    from: r.target.clone(),
                    blackhole: r.blackhole,
                },
            }
        } else {
            Decision::Yield {
                holder: peer
                    .map(|p| format!("{} (the pair's holder)", p.instance_id))
                    .unwrap_or_else(|| "the pair's holder".into()),
            }
        };
        out.push((t.id.clone(), d));
    }
    out
}

/// Why the standby checks the holder now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// The holder hands over (`natctl rotate`): taken over without a check.
    Handover,
    /// No heartbeat ever heard from the peer (`instance`).
    NeverHeard(String),
    /// The holder (`instance`) has been silent this long (`beats` intervals).
    Silent {
        /// The holder.
        instance: String,
        /// How long.
        silence: Duration,
        /// In heartbeat intervals.
        beats: u128,
    },
    /// The holder's heartbeats say it does not forward.
    SaysItFails(String),
    /// Heartbeats in order: the routine check of the holder's forwarding.
    Routine,
    /// A routine check failed: the next one comes a few beats later, not after
    /// [`ROUTINE_EVERY`].
    RoutineAgain(String),
}

impl Due {
    /// A check made while the holder beats and says it forwards.
    pub fn routine(&self) -> bool {
        matches!(self, Self::Routine | Self::RoutineAgain(_))
    }

    /// The holder `instance` silent for `silence`.
    fn silent(instance: &str, silence: Duration, cfg: &Config) -> Self {
        Self::Silent {
            instance: instance.to_string(),
            silence,
            beats: silence.as_millis() / cfg.heartbeat_interval().as_millis().max(1),
        }
    }
}

impl std::fmt::Display for Due {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Handover => f.write_str("the holder hands over (natctl rotate)"),
            Self::NeverHeard(i) => write!(f, "no heartbeat ever heard from {i}"),
            Self::Silent {
                instance,
                silence,
                beats,
            } => write!(
                f,
                "{instance} silent for {} ms ({beats} beats)",
                silence.as_millis()
            ),
            Self::SaysItFails(i) => write!(f, "{i} says it does not forward"),
            Self::Routine => f.write_str("routine check"),
            Self::RoutineAgain(i) => write!(f, "{i} failed a routine check"),
        }
    }
}

/// Why the standby should check the holder now, if it should: the holder is silent
/// for `heartbeat_misses` beats or says it does not forward; we forward, hold nothing,
/// did not lose the role unheard, and know what to move.
pub fn check_due(view: &View, now: Instant, cfg: &Config) -> Option<Due> {
    if view.busy
        || view.holder
        || view.lost_role
        || !view.forwards
        || !view.ready
        || !view.peer_holds
    {
        return None;
    }
    let peer = view.peer.as_ref()?;
    if view.egress_ips().is_empty() || view.me_ip.is_none() {
        return None;
    }
    if view.peer_hands_over
        && view
            .silence(now)
            .is_some_and(|s| s < cfg.heartbeat_interval() * cfg.heartbeat_misses)
    {
        return Some(Due::Handover);
    }
    if view
        .last_check_ok
        .is_some_and(|t| now.saturating_duration_since(t) < CHECK_SPACING)
    {
        return None;
    }
    let limit = cfg.heartbeat_interval() * cfg.heartbeat_misses;
    let since_check = view.last_check.map(|t| now.saturating_duration_since(t));
    let id = || peer.instance_id.clone();
    match view.silence(now) {
        None => Some(Due::NeverHeard(id())),
        Some(s) if s >= limit => Some(Due::silent(&peer.instance_id, s, cfg)),
        Some(_) if !view.peer_says_forwards => Some(Due::SaysItFails(id())),
        Some(_) if view.check_failures > 0 && since_check.is_none_or(|d| d >= limit) => {
            Some(Due::RoutineAgain(id()))
        }
        Some(_) if since_check.is_none_or(|d| d >= ROUTINE_EVERY) => Some(Due::Routine),
        Some(_) => None,
    }
}

/// What the standby learnt, beside the failed check through the holder, in the same
/// moment: whether its own path to the same target works (the witness: a connection
/// leaving by its own interface, not through the holder) and whether the holder's end
/// of the link between them answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    /// Our own connection to the target opened.
    pub own_path: bool,
    /// The holder's end of the VXLAN link answered (accepted or refused).
    pub link: bool,
}

/// Why a failed check through the holder was not taken for a holder that does not
/// forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotActed {
    /// Our own path to the target fails too: ours, or the target's, is the fault.
    OwnPath,
    /// The holder's end of the link does not answer: the link is the fault.
    Link,
    /// No check through this holder has ever passed, and it is not silent long enough.
    Unproven,
    /// We lost the role less than [`ROUTINE_HOLD_DOWN`] ago.
    HoldDown,
    /// One failed routine check: the next decides.
    FirstFailure,
}

impl std::fmt::Display for NotActed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::OwnPath => "our own path to the same target fails too (our fault, or the target's)",
            Self::Link => "the holder's end of the VXLAN link does not answer (the link between us, not its forwarding)",
            Self::Unproven => "no check through this holder has passed yet (the check path is unproven)",
            Self::HoldDown => "we lost the role less than a minute ago",
            Self::FirstFailure => "one failed check; the next decides",
        })
    }
}

/// What a failed check through the holder means, decided from what else is known:
/// `Ok(())` to take over, or why not.
///
/// - The holder is silent or says it fails: its beats corroborate the failed check.
///   Taken at once when a check through this holder has passed before (the path is
///   proven) or the holder itself says it fails; with an unproven path only once the
///   holder has been silent for [`UNPROVEN_SILENCE`] (or, never heard, been our peer
///   that long).
/// - The holder beats and says it forwards (a routine check): only our own evidence
///   speaks against it, so it must be strong: our own path to the same target works, the
///   holder's end of the link answers, the path through it is proven, we did not just
///   lose the role, and the check failed [`ROUTINE_FAILURES`] times in a row. A standby
///   whose own path or link is broken never moves anything on routine checks, so the
///   pair cannot take turns.
pub fn judge_failed_check(
    due: &Due,
    view: &View,
    evidence: Evidence,
    now: Instant,
) -> Result<(), NotActed> {
    let proven = view.proven();
    match due {
        Due::Handover | Due::SaysItFails(_) => Ok(()),
        Due::Silent { silence, .. } => {
            if proven || *silence >= UNPROVEN_SILENCE {
                Ok(())
            } else {
                Err(NotActed::Unproven)
            }
        }
        Due::NeverHeard(_) => {
            let peer_for = view
                .peer_since
                .map(|t| now.saturating_duration_since(t))
                .unwrap_or_default();
            if proven || peer_for >= UNPROVEN_SILENCE {
                Ok(())
            } else {
                Err(NotActed::Unproven)
            }
        }
        Due::Routine | Due::RoutineAgain(_) => {
            if !evidence.own_path {
                Err(NotActed::OwnPath)
            } else if !evidence.link {
                Err(NotActed::Link)
            } else if !proven {
                Err(NotActed::Unproven)
            } else if view
                .lost_role_at
                .is_some_and(|t| now.saturating_duration_since(t) < ROUTINE_HOLD_DOWN)
            {
                Err(NotActed::HoldDown)
            } else if view.check_failures + 1 < ROUTINE_FAILURES {
                Err(NotActed::FirstFailure)
            } else {
                Ok(())
            }
        }
    }
}

/// How far the standby's copy of the holder's connections (its conntrackd's external
/// cache) is behind the holder's table (the holder's internal cache, from its
/// heartbeats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncLag {
    /// No count from the holder or from our conntrackd (yet).
    #[default]
    Unknown,
    /// Within [`sync_tolerance`] of the holder.
    InStep,
    /// `entries` behind, since `since`.
    Behind {
        /// Connections the holder tracks that the copy lacks.
        entries: u64,
        /// Since when the copy has been behind.
        since: Instant,
    },
}

impl SyncLag {
    /// Entries behind and for how long, for reports (`(0, 0)` in step).
    pub fn amount(&self, now: Instant) -> Option<(u64, Duration)> {
        match self {
            Self::Unknown => None,
            Self::InStep => Some((0, Duration::ZERO)),
            Self::Behind { entries, since } => {
                Some((*entries, now.saturating_duration_since(*since)))
            }
        }
    }
}

/// How many entries apart the two counts may be and still be in step: they are read at
/// different moments (the holder's up to a pass before its heartbeat carries it), so
/// connections opened and closed in between differ. 32, or 5% of the holder's table.
pub fn sync_tolerance(held: u64) -> u64 {
    (held / 20).max(32)
}

/// A copy behind for this long is healed with a full resync (the standby asks the
/// holder's conntrackd for its whole table).
pub const RESYNC_AFTER: Duration = Duration::from_secs(15);

/// Asked again no sooner than this while the copy stays behind (the channel may still
/// be broken: each ask is one bulk transfer once it works).
pub const RESYNC_SPACING: Duration = Duration::from_secs(30);

/// The standby's lag from the holder's count (`peer_held`) and its own copy's
/// (`synced`), given the lag as it was (`before`).
pub fn sync_lag(
    peer_held: Option<u64>,
    synced: Option<u64>,
    before: SyncLag,
    now: Instant,
) -> SyncLag {
    let (Some(held), Some(synced)) = (peer_held, synced) else {
        return SyncLag::Unknown;
    };
    let behind = held.saturating_sub(synced);
    if behind <= sync_tolerance(held) {
        return SyncLag::InStep;
    }
    let since = match before {
        SyncLag::Behind { since, .. } => since,
        _ => now,
    };
    SyncLag::Behind {
        entries: behind,
        since,
    }
}

/// Whether the standby asks for a full resync now: behind for [`RESYNC_AFTER`], and
/// not asked within [`RESYNC_SPACING`].
pub fn resync_due(lag: SyncLag, last_ask: Option<Instant>, now: Instant) -> bool {
    match lag {
        SyncLag::Behind { since, .. } => {
            now.saturating_duration_since(since) >= RESYNC_AFTER
                && last_ask.is_none_or(|t| now.saturating_duration_since(t) >= RESYNC_SPACING)
        }
        _ => false,
    }
}

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

/// Stops a conntrackd a previous natd started with our configuration and left running
/// (natd killed outside a service manager that stops its children): two conntrackds on
/// one sync port would leave the pair without state sync.
async fn stop_leftover(bin: &std::path::Path, conf: &std::path::Path) {
    let name = bin.file_name().map(|n| n.to_string_lossy().into_owned());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let conf = conf.to_string_lossy().into_owned();
    let mut stopped = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_conntrackd = args.first().is_some_and(|a| {
            std::path::Path::new(a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                == name
        });
        if is_conntrackd && args.len() == 3 && args[1] == "-C" && args[2] == conf {
            let pid = nix::unistd::Pid::from_raw(pid);
            if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
                stopped.push(pid);
            }
        }
    }
    if stopped.is_empty() {
        return;
    }
    warn!(
        "pair: stopping the conntrackd a previous natd left running ({})",
        stopped
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    for _ in 0..20 {
        if stopped
            .iter()
            .all(|p| nix::sys::signal::kill(*p, None).is_err())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in stopped {
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
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

/// conntrackd, configured and supervised by natd.
#[derive(Debug)]
pub struct Sync {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: tokio::sync::Mutex<Option<(tokio::process::Child, Ipv4Addr)>>,
    /// conntrackd was started once by this natd.
    started: std::sync::atomic::AtomicBool,
}

impl Sync {
    /// conntrackd `bin`, its files in `dir`, syncing over UDP `port`.
    pub fn new(cfg: &Config) -> Self {
        Self {
            bin: cfg.conntrackd.clone(),
            dir: cfg.state_dir.clone(),
            port: cfg.sync_port,
            child: tokio::sync::Mutex::new(None),
            started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("conntrackd.conf")
    }

    /// The UDP port it syncs over.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// conntrackd's configuration: FTFW (reliable) sync over unicast UDP to the peer,
    /// the peer's state kept in the external cache until a takeover commits it; only
    /// forwarded connections (not the pair's own traffic) are synced.
    pub fn config_text(&self, iface: &str, me: Ipv4Addr, peer: Ipv4Addr) -> String {
        let d = self.dir.display();
        format!(
            r#"# Written by natd (pair mode); rewritten when the peer changes.
Sync {{
    Mode FTFW {{
        ResendQueueSize 131072
        PurgeTimeout 60
        ACKWindowSize 300
        DisableExternalCache Off
    }}
    UDP {{
        IPv4_address {me}
        IPv4_Destination_Address {peer}
        Port {port}
        Interface {iface}
        SndSocketBuffer 1249280
        RcvSocketBuffer 1249280
        Checksum on
    }}
}}
General {{
    Systemd off
    HashSize 32768
    HashLimit 262144
    LogFile {d}/conntrackd.log
    Syslog off
    LockFile {d}/conntrackd.lock
    UNIX {{
        Path {d}/conntrackd.ctl
    }}
    NetlinkBufferSize 2097152
    NetlinkBufferSizeMaxGrowth 8388608
    NetlinkOverrunResync On
    NetlinkEventsReliable Off
    Filter From Userspace {{
        Protocol Accept {{
            TCP
            UDP
            ICMP
        }}
        Address Ignore {{
            IPv4_address 127.0.0.0/8
            IPv4_address {me}
            IPv4_address {peer}
            IPv4_address {OVERLAY_NET}/30
        }}
    }}
}}
"#,
            port = self.port
        )
    }

    /// Starts conntrackd for `peer` unless it runs for it already; `Ok(true)` when it
    /// was (re)started.
    pub async fn ensure(&self, iface: &str, me: Ipv4Addr, peer: Ipv4Addr) -> Result<bool, String> {
        let mut child = self.child.lock().await;
        if let Some((c, p)) = child.as_mut() {
            match c.try_wait() {
                Ok(None) if *p == peer => return Ok(false),
                Ok(None) => {
                    info!("conntrackd: the peer is now {peer}; restarting");
                    let _ = c.kill().await;
                }
                Ok(Some(status)) => warn!("conntrackd exited ({status}); restarting"),
                Err(e) => warn!("conntrackd: {e}; restarting"),
            }
            *child = None;
        }
        if !self.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            stop_leftover(&self.bin, &self.conf()).await;
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        std::fs::write(self.conf(), self.config_text(iface, me, peer))
            .map_err(|e| format!("{}: {e}", self.conf().display()))?;
        // A lock left by a killed conntrackd would stop the new one.
        let _ = std::fs::remove_file(self.dir.join("conntrackd.lock"));
        let _ = std::fs::remove_file(self.dir.join("conntrackd.ctl"));
        let c = tokio::process::Command::new(&self.bin)
            .arg("-C")
            .arg(self.conf())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        *child = Some((c, peer));
        Ok(true)
    }

    /// Runs `conntrackd -C conf <args>`; its output.
    pub async fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let run = tokio::process::Command::new(&self.bin)
            .arg("-C")
            .arg(self.conf())
            .args(args)
            .stdin(Stdio::null())
            .output();
        let out = tokio::time::timeout(CTL_TIMEOUT, run)
            .await
            .map_err(|_| format!("conntrackd {} took over {CTL_TIMEOUT:?}", args.join(" ")))?
            .map_err(|e| format!("conntrackd {}: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "conntrackd {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Whether conntrackd runs.
    pub async fn running(&self) -> bool {
        let mut child = self.child.lock().await;
        child
            .as_mut()
            .is_some_and(|(c, _)| matches!(c.try_wait(), Ok(None)))
    }

    /// Entries in conntrackd's caches, when it answers: (internal: the connections
    /// this instance forwards, external: the peer's state it holds).
    pub async fn cache_entries(&self) -> (Option<u64>, Option<u64>) {
        match self.ctl(&["-s", "cache"]).await {
            Ok(out) => cache_entries(&out),
            Err(_) => (None, None),
        }
    }
}

/// Parses `conntrackd -s cache` ("cache:internal\tactive objects:\t\t   42", then the
/// same for `cache:external`).
pub fn cache_entries(out: &str) -> (Option<u64>, Option<u64>) {
    let count = |cache: &str| {
        out.lines()
            .find(|l| l.starts_with(cache) && l.contains("active objects"))
            .and_then(|l| l.split(':').next_back())
            .and_then(|n| n.trim().parse().ok())
    };
    (count("cache:internal"), count("cache:external"))
}

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
    use std::collections::BTreeMap;

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

    #[test]
    fn conntrackds_cache_counts_are_read() {
        let out = "cache:internal \tactive objects:\t\t    1234\n\tactive/total entries:\t\t    1234/\t    1240\n\tcreation OK/failed:\t\t    1240/\t       0\n\ncache:external \tactive objects:\t\t      17\n\tactive/total entries:\t\t      17/\t      17\n";
        assert_eq!(cache_entries(out), (Some(1234), Some(17)));
        assert_eq!(cache_entries("conntrackd: cannot connect"), (None, None));
    }

    fn member(id: &str, ip: [u8; 4], eni: &str, t: i64) -> Member {
        Member {
            instance_id: id.into(),
            ip: Ipv4Addr::from(ip),
            eni: eni.into(),
            launch_time: t,
            handover: false,
        }
    }

    #[test]
    fn a_handover_is_taken_at_once_while_the_holder_beats() {
        let now = Instant::now();
        let v = View {
            peer_hands_over: true,
            last_check: Some(now),
            ..standby(now)
        };
        assert_eq!(check_due(&v, now, &cfg()), Some(Due::Handover));
        // A stale handover flag from a silent holder is an ordinary silence.
        let late = now + Duration::from_secs(1);
        assert_ne!(check_due(&v, late, &cfg()), Some(Due::Handover));
    }

    fn egress(eni: Option<&str>) -> Egress {
        Egress {
            allocation_id: "eipalloc-1".into(),
            public_ip: "52.208.0.1".into(),
            eni: eni.map(str::to_string),
            private_ip: eni.map(|_| Ipv4Addr::new(10, 0, 0, 9)),
        }
    }

    fn cfg() -> Config {
        Config {
            pair: true,
            ..Config::default()
        }
    }

    fn standby(now: Instant) -> View {
        View {
            me_ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
            peer: Some(member("i-b", [10, 0, 0, 6], "eni-b", 1)),
            egress: vec![egress(Some("eni-b"))],
            peer_holds: true,
            forwards: true,
            ready: true,
            last_beat: Some(now),
            peer_says_forwards: true,
            peer_says_holder: true,
            ..View::default()
        }
    }

    #[test]
    fn the_peer_is_the_holder_else_the_newest_other_instance() {
        let ms = vec![
            member("i-me", [10, 0, 0, 5], "eni-me", 5),
            member("i-old", [10, 0, 0, 6], "eni-old", 1),
            member("i-new", [10, 0, 0, 7], "eni-new", 9),
        ];
        assert_eq!(
            choose_peer(&ms, "i-me", &[egress(Some("eni-old"))])
                .expect("a peer")
                .instance_id,
            "i-old"
        );
        assert_eq!(
            choose_peer(&ms, "i-me", &[egress(None)])
                .expect("a peer")
                .instance_id,
            "i-new"
        );
        assert_eq!(choose_peer(&ms[..1], "i-me", &[]), None);
    }

    #[test]
    fn beats_in_time_never_trigger_a_check() {
        let now = Instant::now();
        let v = View {
            last_check: Some(now),
            ..standby(now)
        };
        assert_eq!(
            check_due(&v, now + Duration::from_millis(250), &cfg()),
            None
        );
        // ... but a routine check of the holder's forwarding comes every 2 s.
        let later = View {
            last_beat: Some(now + Duration::from_millis(1900)),
            ..v
        };
        assert_eq!(
            check_due(&later, now + Duration::from_millis(2000), &cfg()),
            Some(Due::Routine)
        );
    }

    #[test]
    fn silence_or_a_holder_that_says_it_fails_triggers_a_check() {
        let now = Instant::now();
        let v = standby(now);
        let due = check_due(&v, now + Duration::from_millis(300), &cfg())
            .expect("due")
            .to_string();
        // A routine check that found the holder forwarding just before it went silent
        // does not delay the check.
        let routine_just_before = View {
            last_check: Some(now),
            ..standby(now)
        };
        assert!(
            check_due(
                &routine_just_before,
                now + Duration::from_millis(300),
                &cfg()
            )
            .is_some()
        );
        assert!(due.contains("silent for 300 ms"), "{due}");
        let v = View {
            peer_says_forwards: false,
            ..standby(now)
        };
        assert!(
            check_due(&v, now, &cfg())
                .expect("due")
                .to_string()
                .contains("does not forward")
        );
    }

    #[test]
    fn a_failed_routine_check_is_checked_again_a_few_beats_later() {
        let now = Instant::now();
        let v = View {
            check_failures: 1,
            last_check: Some(now),
            ..standby(now)
        };
        let limit = cfg().heartbeat_interval() * cfg().heartbeat_misses;
        let beat = |t: Instant| View {
            last_beat: Some(t),
            ..v.clone()
        };
        assert_eq!(check_due(&beat(now), now + limit / 2, &cfg()), None);
        assert_eq!(
            check_due(&beat(now + limit), now + limit, &cfg()),
            Some(Due::RoutineAgain("i-b".into()))
        );
    }

    /// The standby of [`standby`] whose checks through the holder have passed before.
    fn proven(now: Instant) -> View {
        View {
            proven_through: Some("i-b".into()),
            peer_since: Some(now - Duration::from_secs(600)),
            ..standby(now)
        }
    }

    #[test]
    fn what_a_failed_check_through_the_holder_means() {
        let now = Instant::now();
        let good = Evidence {
            own_path: true,
            link: true,
        };
        let silent = |ms: u64| Due::Silent {
            instance: "i-b".into(),
            silence: Duration::from_millis(ms),
            beats: u128::from(ms / 100),
        };
        let again = Due::RoutineAgain("i-b".into());
        let lost = |ago: u64| View {
            lost_role_at: Some(now - Duration::from_secs(ago)),
            ..proven(now)
        };
        type Case = (&'static str, Due, View, Evidence, Result<(), NotActed>);
        let cases: Vec<Case> = vec![
            // The holder silent (a death, a frozen host, a full partition).
            (
                "silent, path proven",
                silent(300),
                proven(now),
                good,
                Ok(()),
            ),
            (
                "silent, path never proven (a new link; the holder may not know us yet)",
                silent(300),
                standby(now),
                good,
                Err(NotActed::Unproven),
            ),
            (
                "silent long enough, path never proven",
                silent(10_000),
                standby(now),
                good,
                Ok(()),
            ),
            (
                "never heard, a peer for a moment",
                Due::NeverHeard("i-b".into()),
                View {
                    peer_since: Some(now - Duration::from_secs(1)),
                    ..standby(now)
                },
                good,
                Err(NotActed::Unproven),
            ),
            (
                "never heard, a peer for long",
                Due::NeverHeard("i-b".into()),
                View {
                    peer_since: Some(now - Duration::from_secs(30)),
                    ..standby(now)
                },
                good,
                Ok(()),
            ),
            (
                "the holder says it fails and the check agrees",
                Due::SaysItFails("i-b".into()),
                standby(now),
                good,
                Ok(()),
            ),
            ("handover", Due::Handover, standby(now), good, Ok(())),
            // The holder beats and says it forwards.
            (
                "one failed routine check",
                Due::Routine,
                proven(now),
                good,
                Err(NotActed::FirstFailure),
            ),
            (
                "the second in a row: the holder beats but does not forward",
                again.clone(),
                View {
                    check_failures: 1,
                    ..proven(now)
                },
                good,
                Ok(()),
            ),
            (
                "our own path fails too",
                again.clone(),
                View {
                    check_failures: 1,
                    ..proven(now)
                },
                Evidence {
                    own_path: false,
                    link: true,
                },
                Err(NotActed::OwnPath),
            ),
            (
                "the link does not answer",
                again.clone(),
                View {
                    check_failures: 1,
                    ..proven(now)
                },
                Evidence {
                    own_path: true,
                    link: false,
                },
                Err(NotActed::Link),
            ),
            (
                "never proven through this holder",
                again.clone(),
                View {
                    check_failures: 1,
                    proven_through: Some("i-previous".into()),
                    ..proven(now)
                },
                good,
                Err(NotActed::Unproven),
            ),
            (
                "we just lost the role",
                again.clone(),
                View {
                    check_failures: 1,
                    ..lost(10)
                },
                good,
                Err(NotActed::HoldDown),
            ),
            (
                "we lost the role long ago",
                again.clone(),
                View {
                    check_failures: 1,
                    ..lost(120)
                },
                good,
                Ok(()),
            ),
        ];
        for (what, due, view, evidence, want) in cases {
            assert_eq!(
                judge_failed_check(&due, &view, evidence, now),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn no_check_by_the_holder_a_loser_unheard_a_broken_standby_or_right_after_a_good_check() {
        let now = Instant::now();
        let later = now + Duration::from_secs(2);
        for v in [
            View {
                holder: true,
                ..standby(now)
            },
            View {
                lost_role: true,
                ..standby(now)
            },
            View {
                forwards: false,
                ..standby(now)
            },
            View {
                ready: false,
                ..standby(now)
            },
            View {
                busy: true,
                ..standby(now)
            },
            View {
                peer_holds: false,
                ..standby(now)
            },
            View {
                egress: vec![egress(None)],
                ..standby(now)
            },
            View {
                last_check_ok: Some(later - Duration::from_millis(500)),
                ..standby(now)
            },
        ] {
            assert_eq!(check_due(&v, later, &cfg()), None, "{v:?}");
        }
    }

    #[test]
    fn an_unheld_address_is_claimed_by_the_lower_id_while_both_forward() {
        let now = Instant::now();
        let peer = member("i-b", [10, 0, 0, 6], "eni-b", 1);
        let v = standby(now);
        assert!(should_claim("i-a", Some(&peer), &v, now, &cfg()));
        assert!(!should_claim("i-c", Some(&peer), &v, now, &cfg()));
        // The lower id is silent: the higher claims.
        assert!(should_claim(
            "i-c",
            Some(&peer),
            &v,
            now + Duration::from_secs(1),
            &cfg()
        ));
        assert!(should_claim("i-c", None, &v, now, &cfg()));
    }

    #[test]
    fn the_holder_takes_every_table_and_the_standby_none() {
        let me = Me {
            instance_id: "i-a".into(),
            eni_id: "eni-a".into(),
            launch_time: 1,
            stack: "s".into(),
        };
        let route = |t: &str, blackhole| {
            Some(crate::routes::Route {
                target: Target::Interface(t.into()),
                blackhole,
            })
        };
        let tables = vec![
            Table {
                id: "rtb-1".into(),
                default_route: route("eni-b", false),
            },
            Table {
                id: "rtb-2".into(),
                default_route: None,
            },
            Table {
                id: "rtb-3".into(),
                default_route: route("eni-a", false),
            },
            Table {
                id: "rtb-4".into(),
                default_route: route("eni-a", true),
            },
        ];
        let held: BTreeMap<_, _> = route_plan(&me, &tables, true, None, true)
            .into_iter()
            .collect();
        assert!(matches!(
            held["rtb-1"],
            Decision::Replace {
                blackhole: false,
                ..
            }
        ));
        assert_eq!(held["rtb-2"], Decision::Create);
        assert_eq!(held["rtb-3"], Decision::Ours);
        assert!(matches!(
            held["rtb-4"],
            Decision::Replace {
                blackhole: true,
                ..
            }
        ));
        let standing: BTreeMap<_, _> = route_plan(&me, &tables, false, None, true)
            .into_iter()
            .collect();
        assert_eq!(standing["rtb-3"], Decision::Ours);
        for t in ["rtb-1", "rtb-2", "rtb-4"] {
            assert!(matches!(standing[t], Decision::Yield { .. }), "{t}");
        }
    }

    #[test]
    fn a_read_that_cannot_show_the_latest_move_is_not_believed() {
        let w = Duration::from_secs(5);
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_millis(n);
        // Nothing moved lately: EC2's answer, whatever it says.
        let quiet = View::default();
        for (h, p) in [(true, false), (false, true), (false, false)] {
            assert_eq!(believe(h, p, s(0), &quiet, w), Belief::Read);
        }
        // Our takeover at t0: a read within the window that still shows the peer is
        // stale; one after the window is believed (the peer may really hold it again).
        let took = View {
            moved_here: Some(t0),
            ..View::default()
        };
        assert_eq!(
            believe(false, true, s(1000), &took, w),
            Belief::OursNotYetRead
        );
        assert_eq!(
            believe(false, false, s(1000), &took, w),
            Belief::OursNotYetRead
        );
        assert_eq!(believe(true, false, s(1000), &took, w), Belief::Read);
        assert_eq!(believe(false, true, s(5000), &took, w), Belief::Read);
        // The peer heard saying it took the address over: a read that still shows us
        // is stale, for the window; a heartbeat saying holder that no move went with
        // (it has always held) is not a claim.
        let claimed = || View {
            peer_says_holder: true,
            peer_claim_heard: Some(t0),
            ..View::default()
        };
        assert_eq!(
            believe(true, false, s(200), &claimed(), w),
            Belief::PeersNotYetRead
        );
        assert_eq!(
            believe(false, false, s(200), &claimed(), w),
            Belief::PeersNotYetRead
        );
        assert_eq!(believe(false, true, s(200), &claimed(), w), Belief::Read);
        assert_eq!(believe(true, false, s(6000), &claimed(), w), Belief::Read);
        let since_says_standby = View {
            peer_says_holder: false,
            ..claimed()
        };
        assert_eq!(
            believe(true, false, s(200), &since_says_standby, w),
            Belief::Read
        );
        // Both moved within the window: the later one wins (two takeovers in a
        // partition, a handover back).
        let ours_later = View {
            moved_here: Some(s(300)),
            ..claimed()
        };
        assert_eq!(
            believe(false, true, s(400), &ours_later, w),
            Belief::OursNotYetRead
        );
        let theirs_later = View {
            moved_here: Some(t0),
            peer_claim_heard: Some(s(300)),
            ..claimed()
        };
        assert_eq!(
            believe(true, false, s(400), &theirs_later, w),
            Belief::PeersNotYetRead
        );
        // A zero window believes every read.
        assert_eq!(
            believe(false, true, s(1), &took, Duration::ZERO),
            Belief::Read
        );
    }

    #[test]
    fn a_holder_takes_a_route_back_from_the_peer_only_once_reads_can_show_who_holds() {
        let w = Duration::from_secs(5);
        let t0 = Instant::now();
        assert!(!may_take_from_peer(None, t0, w));
        assert!(!may_take_from_peer(
            Some(t0),
            t0 + Duration::from_secs(4),
            w
        ));
        assert!(may_take_from_peer(Some(t0), t0 + w, w));
        let me = Me {
            instance_id: "i-a".into(),
            eni_id: "eni-a".into(),
            launch_time: 1,
            stack: "s".into(),
        };
        let peer = member("i-b", [10, 0, 0, 6], "eni-b", 1);
        let on = |target: Target, blackhole| Table {
            id: "rtb-1".into(),
            default_route: Some(crate::routes::Route { target, blackhole }),
        };
        let tables = vec![
            on(Target::Interface("eni-b".into()), false),
            Table {
                id: "rtb-2".into(),
                ..on(Target::Instance("i-b".into()), false)
            },
            Table {
                id: "rtb-3".into(),
                ..on(Target::Interface("eni-b".into()), true)
            },
            Table {
                id: "rtb-4".into(),
                ..on(Target::Interface("eni-x".into()), false)
            },
        ];
        let waiting: BTreeMap<_, _> = route_plan(&me, &tables, true, Some(&peer), false)
            .into_iter()
            .collect();
        for t in ["rtb-1", "rtb-2"] {
            assert!(
                matches!(&waiting[t], Decision::Yield { holder } if holder.starts_with("i-b")),
                "{t}"
            );
        }
        // A blackhole on the peer, or a route elsewhere, is no sign of a takeover.
        for t in ["rtb-3", "rtb-4"] {
            assert!(matches!(waiting[t], Decision::Replace { .. }), "{t}");
        }
        let taking: BTreeMap<_, _> = route_plan(&me, &tables, true, Some(&peer), true)
            .into_iter()
            .collect();
        assert!(
            taking
                .values()
                .all(|d| matches!(d, Decision::Replace { .. }))
        );
    }

    #[test]
    fn the_standbys_copy_is_behind_only_past_the_tolerance_and_is_resynced_after_a_while() {
        let t0 = Instant::now();
        let s = |n| Duration::from_secs(n);
        // Unknown until both counts are known.
        assert_eq!(
            sync_lag(None, Some(10), SyncLag::InStep, t0),
            SyncLag::Unknown
        );
        assert_eq!(
            sync_lag(Some(10), None, SyncLag::InStep, t0),
            SyncLag::Unknown
        );
        // Within 32 entries or 5%: in step (the counts are read at different moments).
        assert_eq!(
            sync_lag(Some(40), Some(8), SyncLag::Unknown, t0),
            SyncLag::InStep
        );
        assert_eq!(
            sync_lag(Some(10_000), Some(9_500), SyncLag::Unknown, t0),
            SyncLag::InStep
        );
        // A copy ahead of the holder (it counted later, after new connections) is in
        // step.
        assert_eq!(
            sync_lag(Some(100), Some(180), SyncLag::Unknown, t0),
            SyncLag::InStep
        );
        // Behind: since the first reading that said so, kept while it stays behind.
        let behind = sync_lag(Some(10_000), Some(9_000), SyncLag::InStep, t0);
        assert_eq!(
            behind,
            SyncLag::Behind {
                entries: 1_000,
                since: t0
            }
        );
        let later = sync_lag(Some(10_000), Some(2_000), behind, t0 + s(20));
        assert_eq!(
            later,
            SyncLag::Behind {
                entries: 8_000,
                since: t0
            }
        );
        assert_eq!(later.amount(t0 + s(20)), Some((8_000, s(20))));
        assert_eq!(SyncLag::InStep.amount(t0), Some((0, Duration::ZERO)));
        assert_eq!(SyncLag::Unknown.amount(t0), None);
        // A full resync once behind for RESYNC_AFTER, then no more often than
        // RESYNC_SPACING; never while in step or unknown.
        assert!(!resync_due(behind, None, t0 + RESYNC_AFTER - s(1)));
        assert!(resync_due(behind, None, t0 + RESYNC_AFTER));
        let asked = t0 + RESYNC_AFTER;
        assert!(!resync_due(
            behind,
            Some(asked),
            asked + RESYNC_SPACING - s(1)
        ));
        assert!(resync_due(behind, Some(asked), asked + RESYNC_SPACING));
        assert!(!resync_due(SyncLag::InStep, None, t0 + s(600)));
        assert!(!resync_due(SyncLag::Unknown, None, t0 + s(600)));
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
