//! Which default routes natd takes over, decided without I/O.
//!
//! The ownership rule, for tables tagged `natd:egress=<stack>`:
//! - no default route, a blackhole, or a target that is not a live natd of the same
//!   stack (a NAT gateway, an IGW, a dead or foreign instance): take it;
//! - a live natd of the same stack holds it: the *newest* instance keeps it (later
//!   launch time; on a tie, the greater instance id). An instance refresh launches the
//!   replacement first, so the new instance takes over and the old one stands by; both
//!   compute the same order from the same facts, so they never take turns (no flapping).

use std::collections::BTreeMap;

/// Where a default route points.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A network interface, `eni-...`.
    Interface(String),
    /// An instance, `i-...` (routes created by instance id).
    Instance(String),
    /// Anything else: a gateway, a NAT gateway, a peering, ...
    Other(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Interface(s) | Target::Instance(s) | Target::Other(s) => f.write_str(s),
        }
    }
}

/// One tagged route table as read from EC2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// `rtb-...`
    pub id: String,
    /// The current `0.0.0.0/0` route, if any.
    pub default_route: Option<Route>,
}

/// A default route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Where it points.
    pub target: Target,
    /// EC2 says `blackhole` (target gone).
    pub blackhole: bool,
}

/// What natd knows about an instance that holds a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `i-...`
    pub instance_id: String,
    /// `running`, `pending`, `stopped`, ...
    pub state: String,
    /// Launch time, seconds since the epoch.
    pub launch_time: i64,
    /// The instance's `natd:stack` tag.
    pub stack: Option<String>,
}

/// This instance, as the rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    /// `i-...`
    pub instance_id: String,
    /// Our ENI, the target natd writes.
    pub eni_id: String,
    /// Our launch time, seconds since the epoch.
    pub launch_time: i64,
    /// Our stack.
    pub stack: String,
}

/// The decision for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The route already targets us.
    Ours,
    /// Create the default route (the table has none).
    Create,
    /// Replace the default route; `from` is the old target, `blackhole` whether it was.
    Replace {
        /// The old target.
        from: Target,
        /// Whether the old route was a blackhole.
        blackhole: bool,
    },
    /// A newer live natd holds it: leave it.
    Yield {
        /// The instance that keeps it.
        holder: String,
    },
}

/// The route targets whose holders natd must look up to decide.
pub fn targets_to_resolve(me: &Me, tables: &[Table]) -> Vec<Target> {
    let mut out: Vec<Target> = tables
        .iter()
        .filter_map(|t| t.default_route.as_ref())
        .filter(|r| !r.blackhole && !is_me(me, &r.target))
        .filter(|r| !matches!(r.target, Target::Other(_)))
        .map(|r| r.target.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn is_me(me: &Me, t: &Target) -> bool {
    match t {
        Target::Interface(e) => *e == me.eni_id,
        Target::Instance(i) => *i == me.instance_id,
        Target::Other(_) => false,
    }
}

/// Whether `holder` outranks `me` under the ownership rule.
pub fn outranks(holder: &Holder, me: &Me) -> bool {
    holder.state == "running"
        && holder.stack.as_deref() == Some(me.stack.as_str())
        && (holder.launch_time, holder.instance_id.as_str())
            > (me.launch_time, me.instance_id.as_str())
}

/// Decides every table. `holders` maps resolved targets to the instance behind them; a
/// target missing from it is treated as gone.
pub fn plan(
    me: &Me,
    tables: &[Table],
    holders: &BTreeMap<Target, Holder>,
) -> Vec<(String, Decision)> {
    tables
        .iter()
        .map(|t| {
            let d = match &t.default_route {
                None => Decision::Create,
                Some(r) if is_me(me, &r.target) && !r.blackhole => Decision::Ours,
                Some(r) => match holders.get(&r.target) {
                    Some(h) if !r.blackhole && outranks(h, me) => Decision::Yield {
                        holder: h.instance_id.clone(),
                    },
                    _ => Decision::Replace {
                        from: r.target.clone(),
                        blackhole: r.blackhole,
                    },
                },
            };
            (t.id.clone(), d)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Me {
        Me {
            instance_id: "i-0b".into(),
            eni_id: "eni-me".into(),
            launch_time: 1000,
            stack: "dev".into(),
        }
    }

    fn table(id: &str, target: Option<Target>, blackhole: bool) -> Table {
        Table {
            id: id.into(),
            default_route: target.map(|target| Route { target, blackhole }),
        }
    }

    fn holder(id: &str, state: &str, launch: i64, stack: &str) -> Holder {
        Holder {
            instance_id: id.into(),
            state: state.into(),
            launch_time: launch,
            stack: Some(stack.into()),
        }
    }

    #[test]
    fn decisions_table() {
        let eni = |s: &str| Target::Interface(s.into());
        let tables = vec![
            table("rtb-missing", None, false),
            table("rtb-ours", Some(eni("eni-me")), false),
            table(
                "rtb-ours-by-instance",
                Some(Target::Instance("i-0b".into())),
                false,
            ),
            table("rtb-blackhole", Some(eni("eni-dead")), true),
            table("rtb-natgw", Some(Target::Other("nat-123".into())), false),
            table("rtb-older", Some(eni("eni-old")), false),
            table("rtb-newer", Some(eni("eni-new")), false),
            table("rtb-stopped", Some(eni("eni-stopped")), false),
            table("rtb-foreign", Some(eni("eni-foreign")), false),
            table("rtb-unknown", Some(eni("eni-gone")), false),
        ];
        let holders: BTreeMap<Target, Holder> = [
            (eni("eni-old"), holder("i-0a", "running", 900, "dev")),
            (eni("eni-new"), holder("i-0c", "running", 1100, "dev")),
            (eni("eni-stopped"), holder("i-0d", "stopped", 1200, "dev")),
            (eni("eni-foreign"), holder("i-0e", "running", 1300, "prod")),
        ]
        .into_iter()
        .collect();
        let got: BTreeMap<String, Decision> = plan(&me(), &tables, &holders).into_iter().collect();
        let replace = |from: Target, blackhole| Decision::Replace { from, blackhole };
        assert_eq!(got["rtb-missing"], Decision::Create);
        assert_eq!(got["rtb-ours"], Decision::Ours);
        assert_eq!(got["rtb-ours-by-instance"], Decision::Ours);
        assert_eq!(got["rtb-blackhole"], replace(eni("eni-dead"), true));
        assert_eq!(
            got["rtb-natgw"],
            replace(Target::Other("nat-123".into()), false)
        );
        assert_eq!(got["rtb-older"], replace(eni("eni-old"), false));
        assert_eq!(
            got["rtb-newer"],
            Decision::Yield {
                holder: "i-0c".into()
            }
        );
        assert_eq!(got["rtb-stopped"], replace(eni("eni-stopped"), false));
        assert_eq!(got["rtb-foreign"], replace(eni("eni-foreign"), false));
        assert_eq!(got["rtb-unknown"], replace(eni("eni-gone"), false));
        let resolve = targets_to_resolve(&me(), &tables);
        assert!(!resolve.contains(&eni("eni-me")));
        assert!(!resolve.contains(&eni("eni-dead")));
        assert!(resolve.contains(&eni("eni-new")));
    }

    #[test]
    fn two_live_agents_agree_and_do_not_flap() {
        // Each agent sees the other holding the route; exactly one yields.
        let a = me();
        let b = Me {
            instance_id: "i-0c".into(),
            eni_id: "eni-b".into(),
            launch_time: 1000,
            stack: "dev".into(),
        };
        let ha = holder(&a.instance_id, "running", a.launch_time, "dev");
        let hb = holder(&b.instance_id, "running", b.launch_time, "dev");
        assert!(outranks(&hb, &a), "same launch time: greater id wins");
        assert!(!outranks(&ha, &b));
        // a sees b's route: yields. b sees a's route: takes it back. Both stable
        // after b holds it: a yields every pass, b sees its own route.
        let t_b = vec![table(
            "rtb-1",
            Some(Target::Interface("eni-b".into())),
            false,
        )];
        let holders: BTreeMap<Target, Holder> = [(Target::Interface("eni-b".into()), hb)].into();
        for _ in 0..3 {
            assert!(matches!(
                plan(&a, &t_b, &holders)[0].1,
                Decision::Yield { .. }
            ));
            assert_eq!(plan(&b, &t_b, &BTreeMap::new())[0].1, Decision::Ours);
        }
    }
}
