//! The stacks' CloudWatch alarms on natd's metrics: one in ALARM is a finding (the data
//! plane's breaks, the others are risks), and a NAT-instance stack without its alarms
//! gets advice.

use super::{Finding, Severity};
use crate::aws::names::Names;

/// One alarm of a stack, as CloudWatch has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmState {
    /// Its name.
    pub name: String,
    /// OK, ALARM or INSUFFICIENT_DATA.
    pub state: String,
    /// CloudWatch's reason.
    pub reason: String,
}

/// A NAT-instance stack whose route tables are in the VPC, and its alarms; `None` when
/// CloudWatch could not be read (then nothing is said).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackAlarms {
    /// The stack.
    pub stack: String,
    /// Its alarms.
    pub alarms: Option<Vec<AlarmState>>,
}

/// The findings on `stacks`.
pub fn findings(stacks: &[StackAlarms]) -> Vec<Finding> {
    let mut out = Vec::new();
    for s in stacks {
        let Some(alarms) = &s.alarms else { continue };
        if alarms.is_empty() {
            out.push(Finding {
                severity: Severity::Advice,
                check: "stack_without_alarms",
                resource: format!("stack {}", s.stack),
                problem: format!(
                    "stack {} has no CloudWatch alarms on natd's metrics: source ports running out, an instance allowance exceeded, a full connection table or a failover go unnoticed until users notice",
                    s.stack
                ),
                evidence: vec![format!(
                    "DescribeAlarms: none of {}*",
                    Names(&s.stack).alarm_prefix()
                )],
                fix: format!(
                    "re-run natctl setup for stack {} (it creates the alarms; --alarm-topic SNS_TOPIC_ARN to be notified)",
                    s.stack
                ),
            });
            continue;
        }
        for a in alarms.iter().filter(|a| a.state == "ALARM") {
            let def = natd_contract::metrics::ALARMS
                .iter()
                .find(|d| Names(&s.stack).alarm(d.suffix) == a.name);
            let breaks = def.is_some_and(|d| d.metric == natd_contract::metrics::DATA_PLANE_OK);
            out.push(Finding {
                severity: if breaks {
                    Severity::Breaks
                } else {
                    Severity::Risk
                },
                check: "alarm_in_alarm",
                resource: a.name.clone(),
                problem: format!(
                    "alarm {} of stack {} is in ALARM: {}",
                    a.name,
                    s.stack,
                    def.map_or("see its metric", |d| d.what)
                ),
                evidence: vec![format!("state ALARM: {}", a.reason)],
                fix: format!(
                    "natctl status --name {} shows the latest values; the alarm returns to OK once its metric does",
                    s.stack
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm(name: &str, state: &str) -> AlarmState {
        AlarmState {
            name: name.into(),
            state: state.into(),
            reason: "Threshold Crossed: 1 datapoint [3.0] was greater than the threshold (0.0)"
                .into(),
        }
    }

    #[test]
    fn an_alarm_in_alarm_is_named_and_a_stack_without_alarms_is_advised() {
        let stacks = [
            StackAlarms {
                stack: "dev".into(),
                alarms: Some(vec![
                    alarm("natd-dev-port-allocation-errors", "ALARM"),
                    alarm("natd-dev-data-plane", "ALARM"),
                    alarm("natd-dev-failover", "OK"),
                ]),
            },
            StackAlarms {
                stack: "bare".into(),
                alarms: Some(vec![]),
            },
            StackAlarms {
                stack: "unread".into(),
                alarms: None,
            },
        ];
        let f = findings(&stacks);
        assert_eq!(f.len(), 3, "{f:#?}");
        let port = f
            .iter()
            .find(|x| x.resource == "natd-dev-port-allocation-errors")
            .expect("port alarm");
        assert_eq!(port.severity, Severity::Risk);
        assert!(port.problem.contains("source port"), "{}", port.problem);
        assert!(port.evidence[0].contains("Threshold Crossed"));
        let data = f
            .iter()
            .find(|x| x.resource == "natd-dev-data-plane")
            .expect("data plane alarm");
        assert_eq!(data.severity, Severity::Breaks);
        let bare = f
            .iter()
            .find(|x| x.check == "stack_without_alarms")
            .expect("advice");
        assert_eq!(bare.severity, Severity::Advice);
        assert!(bare.problem.contains("bare"));
        assert!(!f.iter().any(|x| x.resource.contains("unread")));
    }
}
