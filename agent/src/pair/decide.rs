//! The pair's decisions, pure: from the heartbeats heard, the checks made through the
//! holder, what EC2's reads say and the clock, what to do. No I/O, no clock of its own:
//! the loop in [`super`] feeds them and carries them out.

use super::*;

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
    pub(crate) fn silent(instance: &str, silence: Duration, cfg: &Config) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
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

    /// What a check through the holder found.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Check {
        /// A connection through the holder opened: it forwards.
        Passed,
        /// No connection through the holder, with what else was learnt in the same moment.
        Failed(Evidence),
    }

    /// What the standby does about the holder, given its view, the clock and, when a check
    /// is due, what the check found.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Verdict {
        /// No check is due: nothing to do.
        Nothing,
        /// The holder forwards: stay standby.
        Stay,
        /// Take the routes and the egress addresses, for this reason.
        TakeOver(Due),
        /// The check failed, but that is not enough to act: why.
        Wait(NotActed),
    }

    /// The standby's whole decision for one moment, composed as the pair's loop composes
    /// it (`check_and_take_over`): [`check_due`], then what the check found
    /// ([`judge_failed_check`]). `check` is asked only when a check is due (a handover
    /// needs none).
    fn decide(
        view: &View,
        now: Instant,
        cfg: &Config,
        check: impl FnOnce(&Due) -> Check,
    ) -> Verdict {
        let Some(due) = check_due(view, now, cfg) else {
            return Verdict::Nothing;
        };
        if due == Due::Handover {
            return Verdict::TakeOver(due);
        }
        match check(&due) {
            Check::Passed => Verdict::Stay,
            Check::Failed(evidence) => match judge_failed_check(&due, view, evidence, now) {
                Ok(()) => Verdict::TakeOver(due),
                Err(why) => Verdict::Wait(why),
            },
        }
    }

    /// Every situation the module's documentation describes, as a table: the view, the
    /// moment and the check's finding in, the decision out.
    #[test]
    fn every_situation_of_the_pair_has_one_decision() {
        let now = Instant::now();
        let c = cfg();
        let limit = c.heartbeat_interval() * c.heartbeat_misses;
        let all_good = Evidence {
            own_path: true,
            link: true,
        };
        let failed = Check::Failed(all_good);
        let silent = |v: View, s: Duration| View {
            last_beat: Some(now - s),
            ..v
        };
        let was_proven = |v: View| View {
            proven_through: Some("i-b".into()),
            ..v
        };
        let silence_due = |s: Duration| Due::Silent {
            instance: "i-b".into(),
            silence: s,
            beats: s.as_millis() / c.heartbeat_interval().as_millis(),
        };
        let quiet = Duration::from_millis(400);
        type Row = (&'static str, View, Check, Verdict);
        let rows: Vec<Row> = vec![
            (
                "the holder beats and forwards, checked a moment ago: nothing",
                View {
                    last_check: Some(now),
                    ..standby(now)
                },
                failed,
                Verdict::Nothing,
            ),
            (
                "silence with a failed check, the path proven: take over",
                silent(was_proven(standby(now)), quiet),
                failed,
                Verdict::TakeOver(silence_due(quiet)),
            ),
            (
                "silence while the holder forwards (only heartbeats lost): stay",
                silent(was_proven(standby(now)), quiet),
                Check::Passed,
                Verdict::Stay,
            ),
            (
                "silence, a failed check through a path never proven: wait",
                silent(standby(now), quiet),
                failed,
                Verdict::Wait(NotActed::Unproven),
            ),
            (
                "silence long enough to outweigh an unproven path: take over",
                silent(standby(now), UNPROVEN_SILENCE),
                failed,
                Verdict::TakeOver(silence_due(UNPROVEN_SILENCE)),
            ),
            (
                "a handover (natctl rotate) while the holder beats: take over, no check",
                View {
                    peer_hands_over: true,
                    ..standby(now)
                },
                failed,
                Verdict::TakeOver(Due::Handover),
            ),
            (
                "the holder says it does not forward and the check agrees: take over",
                View {
                    peer_says_forwards: false,
                    ..standby(now)
                },
                failed,
                Verdict::TakeOver(Due::SaysItFails("i-b".into())),
            ),
            (
                "lost the role and not heard the new holder since: nothing",
                View {
                    lost_role: true,
                    ..silent(was_proven(standby(now)), quiet)
                },
                failed,
                Verdict::Nothing,
            ),
            (
                "a partition: a routine check fails and so does our own path: wait",
                was_proven(standby(now)),
                Check::Failed(Evidence {
                    own_path: false,
                    link: true,
                }),
                Verdict::Wait(NotActed::OwnPath),
            ),
            (
                "a partition of the link between the pair only: wait",
                was_proven(standby(now)),
                Check::Failed(Evidence {
                    own_path: true,
                    link: false,
                }),
                Verdict::Wait(NotActed::Link),
            ),
            (
                "a holder that beats but stopped forwarding, first failed check: wait",
                was_proven(standby(now)),
                failed,
                Verdict::Wait(NotActed::FirstFailure),
            ),
            (
                "... and the second failed check in a row: take over",
                View {
                    check_failures: 1,
                    ..was_proven(standby(now))
                },
                failed,
                Verdict::TakeOver(Due::RoutineAgain("i-b".into())),
            ),
            (
                "routine checks fail right after we lost the role to it: hold down",
                View {
                    check_failures: 1,
                    lost_role_at: Some(now),
                    ..was_proven(standby(now))
                },
                failed,
                Verdict::Wait(NotActed::HoldDown),
            ),
            (
                "a replacement whose peer was never heard, just met: wait",
                View {
                    last_beat: None,
                    peer_since: Some(now),
                    ..standby(now)
                },
                failed,
                Verdict::Wait(NotActed::Unproven),
            ),
            (
                "the holder (not the standby) never checks",
                View {
                    holder: true,
                    ..silent(was_proven(standby(now)), quiet)
                },
                failed,
                Verdict::Nothing,
            ),
        ];
        for (situation, view, check, want) in rows {
            let got = decide(&view, now, &c, |_| check);
            assert_eq!(got, want, "{situation}");
        }
        assert!(quiet >= limit);

        // Two claims of an unheld address, both forwarding: the lower id claims, the
        // other waits; a silent peer is no rival.
        let b = member("i-b", [10, 0, 0, 6], "eni-b", 1);
        let beating = standby(now);
        assert!(should_claim("i-a", Some(&b), &beating, now, &c));
        assert!(!should_claim("i-c", Some(&b), &beating, now, &c));
        assert!(should_claim(
            "i-c",
            Some(&b),
            &silent(beating, quiet),
            now,
            &c
        ));

        // Stale reads: a read made before our own move shows the old holder; it is not
        // believed within the consistency window, and is after it.
        let window = c.consistency_window();
        let moved = View {
            moved_here: Some(now),
            ..View::default()
        };
        assert_eq!(
            believe(false, true, now, &moved, window),
            Belief::OursNotYetRead
        );
        assert_eq!(
            believe(false, true, now + window, &moved, window),
            Belief::Read
        );

        // Delayed moves: a holder that reads a route on the peer takes it back only
        // once a read a whole window later still says it holds.
        assert!(!may_take_from_peer(Some(now), now, window));
        assert!(may_take_from_peer(Some(now), now + window, window));
    }
}
