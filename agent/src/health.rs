//! Health accounting, decided without I/O: what natd concludes from its passes.
//!
//! natd checks two different things and keeps them apart:
//! - the **data plane**: does this instance forward? (ip_forward and the other required
//!   sysctls, natd's iptables chains and their jumps, the source/dest check as last read
//!   from EC2, and the configured probes). Checked every interval, locally, whatever AWS
//!   does.
//! - the **control plane**: can natd reach AWS right now? (IMDS for the VPC's CIDRs, EC2
//!   for the source/dest check, routes and the Elastic IP, Auto Scaling for the launch
//!   action and health reports). Checked by a control pass with its own deadline, retried
//!   with bounded backoff when it fails.
//!
//! The rule:
//! - Only consecutive failed **data-plane** passes count towards Unhealthy: after
//!   `unhealthy_after` of them the report is due.
//! - **Control-plane** trouble alone never makes natd report Unhealthy, however long it
//!   lasts: an API brownout is not a dead NAT, and a replacement could not take over the
//!   routes during the brownout anyway. It is logged, shown in sd_notify STATUS, in the
//!   metrics and (once AWS answers again) in the instance's `natd:health` tag.
//! - **Both failing**: data-plane failures still count. The report is itself an API call,
//!   so it stays due and goes out with the first control pass that gets through (the
//!   first thing that pass does); until then natd keeps repairing the kernel every
//!   interval. If the data plane recovers before the report lands, the report is
//!   dropped: the instance forwards again and nothing needs replacing.
//! - One report per failure run: once it landed (or natd found no group to report to),
//!   natd does not repeat it unless the data plane recovers and fails again.

use crate::contract::health::{Control, Data};

/// Whether the Unhealthy report is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Report {
    /// The data plane has not failed `unhealthy_after` passes in a row.
    #[default]
    NotDue,
    /// Due: the next control pass sends it.
    Due,
    /// Sent (or nobody to send it to) for the current failure run.
    Sent,
}

/// What natd has concluded so far.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Health {
    /// Consecutive data-plane passes that found a problem.
    pub data_failures: u32,
    /// What the last failed data-plane pass found (empty when it forwards).
    pub data_problems: Vec<String>,
    /// Consecutive control passes that failed.
    pub control_failures: u32,
    /// What the last failed control pass met (empty when AWS answered).
    pub control_problems: Vec<String>,
    /// The Unhealthy report.
    pub report: Report,
    /// Whether the data plane has forwarded at least once.
    pub ever_forwarded: bool,
}

/// Something worth one log line, because the state changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The data plane forwards for the first time.
    Ready,
    /// A data-plane pass failed; `count` of `limit` in a row. Only when the problems
    /// differ from the previous pass's.
    DataFailed {
        /// Failed passes in a row.
        count: u32,
        /// `unhealthy_after`.
        limit: u32,
        /// What is wrong.
        problems: Vec<String>,
    },
    /// The data plane forwards again after `after` failed passes.
    DataRecovered {
        /// Failed passes before.
        after: u32,
    },
    /// The Unhealthy report is now due.
    ReportDue {
        /// Failed passes in a row.
        count: u32,
    },
    /// The data plane recovered before a due report could be sent: it is dropped.
    ReportDropped,
    /// A control pass failed; only when the problems differ from the previous one's.
    ControlTrouble {
        /// Failed control passes in a row.
        count: u32,
        /// What failed.
        problems: Vec<String>,
    },
    /// AWS answers again after `after` failed control passes.
    ControlRecovered {
        /// Failed control passes before.
        after: u32,
    },
}

/// What one control pass achieved, as far as health is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlOutcome {
    /// Calls that failed (empty: AWS answered everything).
    pub problems: Vec<String>,
    /// The Unhealthy report was sent (or there is no group to send it to).
    pub reported: bool,
}

impl Health {
    /// The state after a data-plane pass that found `problems` (empty: it forwards).
    pub fn after_data(&self, problems: &[String], unhealthy_after: u32) -> (Health, Vec<Note>) {
        let mut next = self.clone();
        let mut notes = Vec::new();
        if problems.is_empty() {
            if !self.ever_forwarded {
                notes.push(Note::Ready);
            } else if self.data_failures > 0 {
                notes.push(Note::DataRecovered {
                    after: self.data_failures,
                });
            }
            if self.report == Report::Due {
                notes.push(Note::ReportDropped);
            }
            next.ever_forwarded = true;
            next.data_failures = 0;
            next.data_problems.clear();
            next.report = Report::NotDue;
            return (next, notes);
        }
        next.data_failures = self.data_failures.saturating_add(1);
        if problems != self.data_problems.as_slice() {
            notes.push(Note::DataFailed {
                count: next.data_failures,
                limit: unhealthy_after,
                problems: problems.to_vec(),
            });
        }
        next.data_problems = problems.to_vec();
        if next.data_failures >= unhealthy_after && self.report == Report::NotDue {
            next.report = Report::Due;
            notes.push(Note::ReportDue {
                count: next.data_failures,
            });
        }
        (next, notes)
    }

    /// The state after a control pass.
    pub fn after_control(&self, outcome: &ControlOutcome) -> (Health, Vec<Note>) {
        let mut next = self.clone();
        let mut notes = Vec::new();
        if outcome.reported && self.report == Report::Due {
            next.report = Report::Sent;
        }
        if outcome.problems.is_empty() {
            if self.control_failures > 0 {
                notes.push(Note::ControlRecovered {
                    after: self.control_failures,
                });
            }
            next.control_failures = 0;
            next.control_problems.clear();
            return (next, notes);
        }
        next.control_failures = self.control_failures.saturating_add(1);
        if outcome.problems != self.control_problems {
            notes.push(Note::ControlTrouble {
                count: next.control_failures,
                problems: outcome.problems.clone(),
            });
        }
        next.control_problems = outcome.problems.clone();
        (next, notes)
    }

    /// Whether the data plane forwards (its last pass found nothing wrong).
    pub fn forwarding(&self) -> bool {
        self.ever_forwarded && self.data_failures == 0
    }

    /// Whether the next control pass must send the Unhealthy report.
    pub fn report_due(&self) -> bool {
        self.report == Report::Due
    }

    /// The data plane as the health report says it: ok, failing, starting.
    pub fn data_state(&self) -> Data {
        match (self.data_failures, self.ever_forwarded) {
            (0, true) => Data::Ok,
            (0, false) => Data::Starting,
            _ => Data::Failing,
        }
    }

    /// The control plane as the health report says it: ok or trouble.
    pub fn control_state(&self) -> Control {
        if self.control_failures == 0 {
            Control::Ok
        } else {
            Control::Trouble
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event of a table row.
    #[derive(Clone, Copy)]
    enum E {
        /// Data plane forwards.
        DOk,
        /// Data plane broken.
        DBad,
        /// Control pass answered.
        COk,
        /// Control pass failed.
        CBad,
        /// Control pass answered and sent the due report.
        CSent,
    }
    use E::*;

    fn run(events: &[E], limit: u32) -> (Health, Vec<Note>) {
        let mut h = Health::default();
        let mut all = Vec::new();
        for e in events {
            let (next, notes) = match e {
                DOk => h.after_data(&[], limit),
                DBad => h.after_data(&["probe 192.0.2.1:443: refused".into()], limit),
                COk => h.after_control(&ControlOutcome::default()),
                CBad => h.after_control(&ControlOutcome {
                    problems: vec!["DescribeRouteTables: dispatch failure".into()],
                    reported: false,
                }),
                CSent => h.after_control(&ControlOutcome {
                    problems: vec![],
                    reported: h.report_due(),
                }),
            };
            h = next;
            all.extend(notes);
        }
        (h, all)
    }

    #[test]
    fn accounting_table() {
        // (name, events, unhealthy_after, report, data failures, control failures)
        type Row<'a> = (&'a str, &'a [E], u32, Report, u32, u32);
        let rows: &[Row] = &[
            ("healthy", &[DOk, COk, DOk, COk], 3, Report::NotDue, 0, 0),
            (
                "API outage while forwarding never reports",
                &[
                    DOk, COk, DOk, CBad, DOk, CBad, DOk, CBad, DOk, CBad, DOk, CBad,
                ],
                3,
                Report::NotDue,
                0,
                5,
            ),
            (
                "data failures count; the report is due",
                &[DOk, DBad, DBad, DBad],
                3,
                Report::Due,
                3,
                0,
            ),
            (
                "failures must be consecutive",
                &[DBad, DBad, DOk, DBad, DBad],
                3,
                Report::NotDue,
                2,
                0,
            ),
            (
                "both failing: due, not sent while AWS is unreachable",
                &[DOk, DBad, CBad, DBad, CBad, DBad, CBad, DBad, CBad],
                3,
                Report::Due,
                4,
                4,
            ),
            (
                "both failing: sent by the first control pass that gets through",
                &[DBad, CBad, DBad, CBad, DBad, CBad, CSent],
                3,
                Report::Sent,
                3,
                0,
            ),
            (
                "data recovers before the report lands: dropped",
                &[DBad, CBad, DBad, CBad, DBad, CBad, DOk],
                3,
                Report::NotDue,
                0,
                3,
            ),
            (
                "sent once per failure run",
                &[DBad, DBad, CSent, DBad, DBad],
                2,
                Report::Sent,
                4,
                0,
            ),
            (
                "a new failure run after recovery reports again",
                &[DBad, DBad, CSent, DOk, DBad, DBad],
                2,
                Report::Due,
                2,
                0,
            ),
            ("unhealthy_after = 1", &[DBad], 1, Report::Due, 1, 0),
            (
                "a control pass without a due report sends nothing",
                &[DBad, CSent],
                3,
                Report::NotDue,
                1,
                0,
            ),
        ];
        for (name, events, limit, report, df, cf) in rows {
            let (h, _) = run(events, *limit);
            assert_eq!(h.report, *report, "{name}: report");
            assert_eq!(h.data_failures, *df, "{name}: data failures");
            assert_eq!(h.control_failures, *cf, "{name}: control failures");
        }
    }

    #[test]
    fn notes_mark_changes_only() {
        let (_, notes) = run(&[DOk, DOk, CBad, CBad, CBad, COk, DBad, DBad, DOk], 3);
        assert_eq!(
            notes,
            vec![
                Note::Ready,
                Note::ControlTrouble {
                    count: 1,
                    problems: vec!["DescribeRouteTables: dispatch failure".into()]
                },
                Note::ControlRecovered { after: 3 },
                Note::DataFailed {
                    count: 1,
                    limit: 3,
                    problems: vec!["probe 192.0.2.1:443: refused".into()]
                },
                Note::DataRecovered { after: 2 },
            ]
        );
        let (_, notes) = run(&[DBad, DBad, CBad, DOk], 2);
        assert!(notes.contains(&Note::ReportDue { count: 2 }));
        assert!(notes.contains(&Note::ReportDropped));
    }

    #[test]
    fn words() {
        let (h, _) = run(&[], 3);
        assert_eq!(
            (h.data_state().word(), h.control_state().word()),
            ("starting", "ok")
        );
        let (h, _) = run(&[DOk, CBad], 3);
        assert_eq!(
            (h.data_state().word(), h.control_state().word()),
            ("ok", "trouble")
        );
        assert!(h.forwarding());
        let (h, _) = run(&[DOk, DBad], 3);
        assert_eq!(h.data_state().word(), "failing");
        assert!(!h.forwarding());
    }
}
