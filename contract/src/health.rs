//! The health report natd publishes in the `natd:health` tag of its instance
//! ([`crate::HEALTH_TAG`]) and natctl's `status` and `doctor` read: one type, written by
//! [`HealthTag`]'s `Display` and read by [`HealthTag::parse`].
//!
//! The text, one line of `key=value` words (a tag value: at most 256 characters):
//! `data=ok|starting|failing control=ok|trouble [failing=N/M] [routes=N]
//! [pair=holder|standby [peer=ID beat=ok|lost|never] [held=N] [synced=N]
//! [lag=0|lag=N/Ss] [takeover=MSms@TIME]] [api-outage=Ss@TIME] at=TIME`, times in RFC
//! 3339 to the second. A reader ignores words it does not know, so a newer natd's report
//! still reads.

use std::fmt;
use std::time::{Duration, SystemTime};

/// The data plane: does the instance forward?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Data {
    /// It has not forwarded yet.
    #[default]
    Starting,
    /// It forwards.
    Ok,
    /// The last pass found a problem.
    Failing,
}

/// The control plane: does natd reach AWS?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Control {
    /// AWS answered everything.
    #[default]
    Ok,
    /// Some calls failed.
    Trouble,
}

/// Failed data-plane passes in a row, of how many before natd reports Unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failing {
    /// Failed passes in a row.
    pub count: u32,
    /// natd's `unhealthy_after`.
    pub limit: u32,
}

/// A member's part in a hot standby pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Holds the routes and the egress addresses.
    Holder,
    /// Keeps a copy of the holder's connections and takes over when it fails.
    Standby,
}

/// Heartbeats from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beats {
    /// Heard within the allowed misses.
    Ok,
    /// Heard once, silent now.
    Lost,
    /// Never heard.
    Never,
}

/// The peer of a pair member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its instance id.
    pub instance: String,
    /// Whether it is heard.
    pub beats: Beats,
}

/// The standby's copy of the holder's connections against the holder's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    /// Within natd's tolerance.
    InStep,
    /// About `entries` behind (two significant digits), for `secs` or more (steps of
    /// 15 s).
    Behind {
        /// Connections the holder tracks that the copy lacks.
        entries: u64,
        /// How long, in steps of 15 s.
        secs: u64,
    },
}

/// The last takeover a member made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Takeover {
    /// From the decision until the moved addresses showed on the instance (or the
    /// API's answer), milliseconds.
    pub ms: u64,
    /// When it was decided.
    pub at: SystemTime,
}

/// A pair member's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairHealth {
    /// Holder or standby.
    pub role: Role,
    /// The other member, once known.
    pub peer: Option<Peer>,
    /// Connections this member's conntrackd tracks (two significant digits).
    pub held: Option<u64>,
    /// Connections of the peer it holds a copy of (two significant digits).
    pub synced: Option<u64>,
    /// The standby's lag, as its natd measures it.
    pub lag: Option<Lag>,
    /// Its last takeover.
    pub takeover: Option<Takeover>,
}

/// The last period natd could not reach AWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// How long it lasted.
    pub secs: u64,
    /// When it ended.
    pub ended: SystemTime,
}

/// natd's account of its instance, without the time it is written. The default: a natd
/// starting, that has not forwarded yet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthReport {
    /// The data plane.
    pub data: Data,
    /// The control plane.
    pub control: Control,
    /// While the data plane fails.
    pub failing: Option<Failing>,
    /// Route tables natd holds.
    pub routes: Option<u32>,
    /// In a hot standby pair.
    pub pair: Option<PairHealth>,
    /// The last API outage.
    pub api_outage: Option<Outage>,
}

/// The tag's whole value: the report and when natd wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTag {
    /// What natd says.
    pub report: HealthReport,
    /// When (to the second).
    pub at: SystemTime,
}

impl Data {
    /// The word in the tag.
    pub fn word(self) -> &'static str {
        match self {
            Data::Starting => "starting",
            Data::Ok => "ok",
            Data::Failing => "failing",
        }
    }
}

impl Control {
    /// The word in the tag.
    pub fn word(self) -> &'static str {
        match self {
            Control::Ok => "ok",
            Control::Trouble => "trouble",
        }
    }
}

impl Role {
    /// The word in the tag.
    pub fn word(self) -> &'static str {
        match self {
            Role::Holder => "holder",
            Role::Standby => "standby",
        }
    }
}

impl Beats {
    /// The word in the tag.
    pub fn word(self) -> &'static str {
        match self {
            Beats::Ok => "ok",
            Beats::Lost => "lost",
            Beats::Never => "never",
        }
    }
}

impl Takeover {
    /// `<ms>ms@<RFC 3339>`, as in the tag.
    pub fn words(&self) -> String {
        format!(
            "{}ms@{}",
            self.ms,
            humantime::format_rfc3339_seconds(self.at)
        )
    }
}

fn time(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(t)
}

impl fmt::Display for HealthReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "data={} control={}",
            self.data.word(),
            self.control.word()
        )?;
        if let Some(x) = self.failing {
            write!(f, " failing={}/{}", x.count, x.limit)?;
        }
        if let Some(n) = self.routes {
            write!(f, " routes={n}")?;
        }
        if let Some(p) = &self.pair {
            write!(f, " {p}")?;
        }
        if let Some(o) = self.api_outage {
            write!(f, " api-outage={}s@{}", o.secs, time(o.ended))?;
        }
        Ok(())
    }
}

/// `pair=holder|standby [peer=ID beat=ok|lost|never] [held=N] [synced=N] [lag=...]
/// [takeover=...]`.
impl fmt::Display for PairHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pair={}", self.role.word())?;
        if let Some(peer) = &self.peer {
            write!(f, " peer={} beat={}", peer.instance, peer.beats.word())?;
        }
        if let Some(n) = self.held {
            write!(f, " held={n}")?;
        }
        if let Some(n) = self.synced {
            write!(f, " synced={n}")?;
        }
        match self.lag {
            Some(Lag::InStep) => f.write_str(" lag=0")?,
            Some(Lag::Behind { entries, secs }) => write!(f, " lag={entries}/{secs}s")?,
            None => {}
        }
        if let Some(t) = &self.takeover {
            write!(f, " takeover={}", t.words())?;
        }
        Ok(())
    }
}

impl fmt::Display for HealthTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at={}", self.report, time(self.at))
    }
}

impl HealthReport {
    /// The report without what changes by itself (connection counts, the last outage,
    /// how far behind a lagging copy is): when the shape changes, the tag is worth
    /// writing at once.
    pub fn shape(&self) -> Shape {
        let mut r = self.clone();
        r.api_outage = None;
        if let Some(p) = &mut r.pair {
            p.held = None;
            p.synced = None;
            p.lag = p.lag.map(|l| match l {
                Lag::InStep => Lag::InStep,
                Lag::Behind { .. } => Lag::Behind {
                    entries: 0,
                    secs: 0,
                },
            });
        }
        Shape(r)
    }
}

/// What of a report is worth writing the tag at once for ([`HealthReport::shape`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape(HealthReport);

impl HealthTag {
    /// Reads a tag value; `None` when it is not one (no `data`, `control` or `at`).
    pub fn parse(value: &str) -> Option<HealthTag> {
        let field = |k: &str| {
            value
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
        };
        let num = |k: &str| field(k).and_then(|n| n.parse::<u64>().ok());
        let at = humantime::parse_rfc3339(field("at")?).ok()?;
        let data = match field("data")? {
            "starting" => Data::Starting,
            "ok" => Data::Ok,
            "failing" => Data::Failing,
            _ => return None,
        };
        let control = match field("control")? {
            "ok" => Control::Ok,
            "trouble" => Control::Trouble,
            _ => return None,
        };
        let failing = field("failing").and_then(|x| {
            let (count, limit) = x.split_once('/')?;
            Some(Failing {
                count: count.parse().ok()?,
                limit: limit.parse().ok()?,
            })
        });
        let api_outage = field("api-outage").and_then(|o| {
            let (secs, ended) = o.split_once("s@")?;
            Some(Outage {
                secs: secs.parse().ok()?,
                ended: humantime::parse_rfc3339(ended).ok()?,
            })
        });
        let pair = field("pair").and_then(|role| {
            let role = match role {
                "holder" => Role::Holder,
                "standby" => Role::Standby,
                _ => return None,
            };
            let peer = field("peer").map(|id| Peer {
                instance: id.to_string(),
                beats: match field("beat") {
                    Some("ok") => Beats::Ok,
                    Some("lost") => Beats::Lost,
                    _ => Beats::Never,
                },
            });
            // `lag=0`, or `lag=<entries>/<secs>s`.
            let lag = field("lag").and_then(|l| match l.split_once('/') {
                None if l == "0" => Some(Lag::InStep),
                None => Some(Lag::Behind {
                    entries: l.parse().ok()?,
                    secs: 0,
                }),
                Some((e, secs)) => Some(Lag::Behind {
                    entries: e.parse().ok()?,
                    secs: secs.strip_suffix('s')?.parse().ok()?,
                }),
            });
            let takeover = field("takeover").and_then(|t| {
                let (ms, at) = t.split_once("ms@")?;
                Some(Takeover {
                    ms: ms.parse().ok()?,
                    at: humantime::parse_rfc3339(at).ok()?,
                })
            });
            Some(PairHealth {
                role,
                peer,
                held: num("held"),
                synced: num("synced"),
                lag,
                takeover,
            })
        });
        Some(HealthTag {
            report: HealthReport {
                data,
                control,
                failing,
                routes: field("routes").and_then(|r| r.parse().ok()),
                pair,
                api_outage,
            },
            at,
        })
    }

    /// Seconds from when natd wrote it to `now` (0 when written later than `now`).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.at).unwrap_or_default()
    }

    /// Whether it is too old to go by: natd rewrites the tag at least every
    /// [`crate::HEALTH_TAG_REFRESH_SECS`], so a report older than twice that comes from a
    /// natd that is stopped or cut off from EC2.
    pub fn stale(&self, now: SystemTime) -> bool {
        self.age(now).as_secs() > 2 * crate::HEALTH_TAG_REFRESH_SECS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).expect("time")
    }

    fn standby() -> HealthReport {
        HealthReport {
            data: Data::Ok,
            control: Control::Ok,
            failing: None,
            routes: None,
            pair: Some(PairHealth {
                role: Role::Standby,
                peer: Some(Peer {
                    instance: "i-1".into(),
                    beats: Beats::Ok,
                }),
                held: Some(0),
                synced: Some(1200),
                lag: Some(Lag::Behind {
                    entries: 3400,
                    secs: 45,
                }),
                takeover: Some(Takeover {
                    ms: 870,
                    at: at("2026-11-25T09:00:00Z"),
                }),
            }),
            api_outage: Some(Outage {
                secs: 40,
                ended: at("2026-11-25T09:30:00Z"),
            }),
        }
    }

    #[test]
    fn what_natd_writes_natctl_reads_back() {
        let tag = HealthTag {
            report: standby(),
            at: at("2026-11-25T10:00:00Z"),
        };
        let text = tag.to_string();
        assert_eq!(
            text,
            "data=ok control=ok pair=standby peer=i-1 beat=ok held=0 synced=1200 lag=3400/45s takeover=870ms@2026-11-25T09:00:00Z api-outage=40s@2026-11-25T09:30:00Z at=2026-11-25T10:00:00Z"
        );
        assert!(text.len() <= crate::TAG_VALUE_MAX);
        assert_eq!(HealthTag::parse(&text), Some(tag));

        let failing = HealthTag {
            report: HealthReport {
                data: Data::Failing,
                control: Control::Trouble,
                failing: Some(Failing { count: 2, limit: 3 }),
                routes: Some(1),
                pair: None,
                api_outage: None,
            },
            at: at("2026-11-25T10:00:00Z"),
        };
        assert_eq!(
            failing.to_string(),
            "data=failing control=trouble failing=2/3 routes=1 at=2026-11-25T10:00:00Z"
        );
        assert_eq!(HealthTag::parse(&failing.to_string()), Some(failing));
    }

    #[test]
    fn a_report_from_an_older_or_newer_natd_still_reads() {
        // Older: no beat, no lag; newer: words this reader does not know.
        let t = HealthTag::parse(
            "data=ok control=ok pair=standby peer=i-1 cpu=3 at=2026-11-25T10:00:00Z",
        )
        .expect("reads");
        let p = t.report.pair.expect("pair");
        assert_eq!(p.peer.expect("peer").beats, Beats::Never);
        assert_eq!(p.lag, None);
        for bad in [
            "",
            "data=ok control=ok",
            "data=ok at=2026-11-25T10:00:00Z",
            "data=maybe control=ok at=2026-11-25T10:00:00Z",
            "data=ok control=ok at=yesterday",
        ] {
            assert_eq!(HealthTag::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_report_goes_stale_after_two_refresh_periods() {
        let t = HealthTag::parse("data=ok control=ok at=2026-11-25T10:00:00Z").expect("reads");
        let later = |s| t.at + Duration::from_secs(s);
        assert!(!t.stale(later(2 * crate::HEALTH_TAG_REFRESH_SECS)));
        assert!(t.stale(later(2 * crate::HEALTH_TAG_REFRESH_SECS + 1)));
        assert_eq!(t.age(t.at - Duration::from_secs(5)), Duration::ZERO);
    }

    #[test]
    fn only_a_change_of_shape_is_worth_writing_at_once() {
        let a = standby();
        let mut b = a.clone();
        // Counts, the outage and how far behind the copy is change by themselves.
        let p = b.pair.as_mut().expect("pair");
        p.held = Some(10);
        p.synced = Some(1300);
        p.lag = Some(Lag::Behind {
            entries: 1200,
            secs: 0,
        });
        b.api_outage = None;
        assert_eq!(a.shape(), b.shape());
        // In step against behind, a lost peer, a failing data plane do not.
        let mut c = a.clone();
        c.pair.as_mut().expect("pair").lag = Some(Lag::InStep);
        assert_ne!(a.shape(), c.shape());
        let mut d = a.clone();
        d.pair.as_mut().expect("pair").peer = Some(Peer {
            instance: "i-1".into(),
            beats: Beats::Lost,
        });
        assert_ne!(a.shape(), d.shape());
        let mut e = a.clone();
        e.data = Data::Failing;
        assert_ne!(a.shape(), e.shape());
    }
}
