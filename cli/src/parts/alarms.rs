//! The stack's CloudWatch alarms on the metrics natd publishes
//! (`natd_contract::metrics::ALARMS`): source-port allocation errors, any network
//! allowance exceeded, the connection table over 80 %, the data plane failing, a
//! failover, and for a pair no standby ready. Each watches the stack's dimension
//! (`StackName`), so it follows the stack across instance replacements. With an SNS
//! topic, each notifies it on ALARM and on OK. Teardown removes them.
//!
//! Owns: [`Spec`], [`Observed`], [`Action`], the pure [`plan`], [`read`], [`apply`];
//! [`Existing`], the pure [`plan_remove`] and [`remove`].

use super::Progress;
use crate::aws::names::{Names, STACK_TAG};
use crate::aws::{Clients, Error, err};
use aws_sdk_cloudwatch::types::{ComparisonOperator, Dimension, Statistic, Tag};
use natd_contract::metrics::{self as catalog, Alarm};
use serde::Serialize;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Spec {
    /// Stack name.
    pub stack: String,
    /// A pair (adds the standby alarm).
    pub pair: bool,
    /// The SNS topic notified on ALARM and OK.
    pub topic: Topic,
}

/// Which SNS topic the alarms notify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// The one they notify now (none for new alarms): `--alarm-topic` not given.
    Keep,
    /// None (`--alarm-topic none`).
    None,
    /// This one.
    Set(String),
}

/// Parses `--alarm-topic`: an SNS topic ARN, or `none`.
pub fn parse_topic(s: &str) -> Result<Topic, String> {
    if s == "none" {
        return Ok(Topic::None);
    }
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "sns"
        && !parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].chars().all(|c| c.is_ascii_digit())
        && !parts[5].is_empty()
        && parts[5].len() <= 256
        && parts[5]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(Topic::Set(s.to_string()))
    } else {
        Err(format!(
            "--alarm-topic {s:?}: expected an SNS topic ARN, arn:aws:sns:REGION:ACCOUNT:TOPIC"
        ))
    }
}

/// One alarm as CloudWatch has it (the settings natctl sets).
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmObs {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Metric.
    pub metric: String,
    /// Statistic.
    pub statistic: String,
    /// Comparison.
    pub comparison: String,
    /// Threshold.
    pub threshold: f64,
    /// Period, seconds.
    pub period: i32,
    /// Evaluation periods.
    pub periods: i32,
    /// Dimensions (name, value).
    pub dimensions: Vec<(String, String)>,
    /// ALARM and OK actions.
    pub actions: (Vec<String>, Vec<String>),
    /// How missing data is treated.
    pub missing: String,
    /// Its state: OK, ALARM, INSUFFICIENT_DATA.
    pub state: String,
    /// Why, in CloudWatch's words.
    pub reason: String,
}

/// What exists now: the stack's alarms, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// The alarms found among the stack's possible names.
    pub alarms: Vec<AlarmObs>,
}

// Observed is compared in tests only; f64 thresholds are whole numbers here.
impl Eq for Observed {}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Create the alarm, or set it as the catalog says (PutMetricAlarm does both).
    Put {
        /// Its name.
        name: String,
        /// Whether it exists already.
        exists: bool,
    },
    /// Delete an alarm the stack no longer has (a pair's, after the pair went).
    Delete {
        /// Its name.
        name: String,
    },
}

/// The settings `a` should have for `spec`, given what exists (`o`).
fn wanted(spec: &Spec, a: &Alarm, o: &Observed) -> AlarmObs {
    let actions: Vec<String> = match &spec.topic {
        Topic::Set(t) => vec![t.clone()],
        Topic::None => vec![],
        Topic::Keep => o
            .alarms
            .iter()
            .find_map(|h| h.actions.0.first().cloned())
            .into_iter()
            .collect(),
    };
    AlarmObs {
        name: Names(&spec.stack).alarm(a.suffix),
        namespace: catalog::NAMESPACE.to_string(),
        metric: a.metric.to_string(),
        statistic: a.statistic.to_string(),
        comparison: a.compare.as_cloudwatch().to_string(),
        threshold: a.threshold,
        period: catalog::PERIOD_SECS,
        periods: a.minutes,
        dimensions: vec![(catalog::STACK_DIMENSION.to_string(), spec.stack.clone())],
        actions: (actions.clone(), actions),
        missing: if a.missing_breaches {
            "breaching"
        } else {
            "notBreaching"
        }
        .to_string(),
        state: String::new(),
        reason: String::new(),
    }
}

/// Every alarm `spec` wants, with its description, as setup puts them on a stack that
/// has none yet (a template's alarms).
pub fn wanted_all(spec: &Spec) -> Vec<(AlarmObs, String)> {
    catalog::alarms(spec.pair)
        .map(|a| (wanted(spec, a, &Observed::default()), description(spec, a)))
        .collect()
}

fn description(spec: &Spec, a: &Alarm) -> String {
    format!("natd stack {}: {}", spec.stack, a.what)
}

fn same(have: &AlarmObs, want: &AlarmObs) -> bool {
    AlarmObs {
        state: String::new(),
        reason: String::new(),
        ..have.clone()
    } == *want
}

/// Every alarm name a stack can have (a pair's included).
pub fn names(stack: &str) -> Vec<String> {
    catalog::alarms(true)
        .map(|a| Names(stack).alarm(a.suffix))
        .collect()
}

/// The changes that turn `o` into `spec`.
pub fn plan(spec: &Spec, o: &Observed) -> Vec<Action> {
    let mut out = Vec::new();
    let want: Vec<AlarmObs> = catalog::alarms(spec.pair)
        .map(|a| wanted(spec, a, o))
        .collect();
    for w in &want {
        match o.alarms.iter().find(|h| h.name == w.name) {
            Some(h) if same(h, w) => {}
            found => out.push(Action::Put {
                name: w.name.clone(),
                exists: found.is_some(),
            }),
        }
    }
    for h in &o.alarms {
        if !want.iter().any(|w| w.name == h.name) {
            out.push(Action::Delete {
                name: h.name.clone(),
            });
        }
    }
    out
}

fn observed(a: &aws_sdk_cloudwatch::types::MetricAlarm) -> AlarmObs {
    AlarmObs {
        name: a.alarm_name().unwrap_or_default().to_string(),
        namespace: a.namespace().unwrap_or_default().to_string(),
        metric: a.metric_name().unwrap_or_default().to_string(),
        statistic: a
            .statistic()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        comparison: a
            .comparison_operator()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        threshold: a.threshold().unwrap_or_default(),
        period: a.period().unwrap_or_default(),
        periods: a.evaluation_periods().unwrap_or_default(),
        dimensions: a
            .dimensions()
            .iter()
            .map(|d| {
                (
                    d.name().unwrap_or_default().to_string(),
                    d.value().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        actions: (a.alarm_actions().to_vec(), a.ok_actions().to_vec()),
        missing: a.treat_missing_data().unwrap_or("missing").to_string(),
        state: a
            .state_value()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        reason: a.state_reason().unwrap_or_default().to_string(),
    }
}

/// Reads the stack's alarms (by their exact names: a prefix would also match the
/// alarms of a stack whose name extends this one's).
pub async fn read(c: &Clients, stack: &str) -> Result<Observed, Error> {
    let r =
        c.cw.describe_alarms()
            .set_alarm_names(Some(names(stack)))
            .send()
            .await
            .map_err(err("DescribeAlarms", stack))?;
    Ok(Observed {
        alarms: r.metric_alarms().iter().map(observed).collect(),
    })
}

/// Carries out `actions`.
pub async fn apply(
    c: &Clients,
    spec: &Spec,
    o: &Observed,
    actions: &[Action],
    progress: Progress<'_>,
) -> Result<(), Error> {
    let mut deletes = Vec::new();
    for a in actions {
        match a {
            Action::Put { name, .. } => {
                let Some(def) = catalog::alarms(spec.pair)
                    .find(|d| Names(&spec.stack).alarm(d.suffix) == *name)
                else {
                    continue;
                };
                let w = wanted(spec, def, o);
                let mut req =
                    c.cw.put_metric_alarm()
                        .alarm_name(&w.name)
                        .alarm_description(description(spec, def))
                        .namespace(&w.namespace)
                        .metric_name(&w.metric)
                        .statistic(Statistic::from(w.statistic.as_str()))
                        .comparison_operator(ComparisonOperator::from(w.comparison.as_str()))
                        .threshold(w.threshold)
                        .period(w.period)
                        .evaluation_periods(w.periods)
                        .treat_missing_data(&w.missing)
                        .dimensions(
                            Dimension::builder()
                                .name(catalog::STACK_DIMENSION)
                                .value(&spec.stack)
                                .build(),
                        )
                        .set_alarm_actions(Some(w.actions.0.clone()))
                        .set_ok_actions(Some(w.actions.1.clone()))
                        .tags(Tag::builder().key(STACK_TAG).value(&spec.stack).build());
                for (k, v) in crate::aws::names::extra_tags() {
                    req = req.tags(Tag::builder().key(k).value(v).build());
                }
                req.send().await.map_err(err("PutMetricAlarm", &w.name))?;
                progress(&format!("alarm {} set", w.name));
            }
            Action::Delete { name } => deletes.push(name.clone()),
        }
    }
    if !deletes.is_empty() {
        remove(
            c,
            &deletes
                .into_iter()
                .map(|name| Removal::Alarm { name })
                .collect::<Vec<_>>(),
            progress,
        )
        .await?;
    }
    Ok(())
}

/// What exists of the part, for its removal: the stack's alarms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    /// Their names.
    pub alarms: Vec<String>,
}

/// One removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Removal {
    /// Delete an alarm.
    Alarm {
        /// Its name.
        name: String,
    },
}

/// Reads what exists of the stack's alarms.
pub async fn read_existing(c: &Clients, stack: &str) -> Result<Existing, Error> {
    Ok(Existing {
        alarms: read(c, stack)
            .await?
            .alarms
            .into_iter()
            .map(|a| a.name)
            .collect(),
    })
}

/// The removals that take `e` away.
pub fn plan_remove(e: &Existing) -> Vec<Removal> {
    e.alarms
        .iter()
        .map(|name| Removal::Alarm { name: name.clone() })
        .collect()
}

/// Carries out `removals` (one DeleteAlarms call; deleting an alarm that is gone is
/// not an error).
pub async fn remove(
    c: &Clients,
    removals: &[Removal],
    progress: Progress<'_>,
) -> Result<(), Error> {
    let names: Vec<String> = removals
        .iter()
        .map(|Removal::Alarm { name }| name.clone())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    c.cw.delete_alarms()
        .set_alarm_names(Some(names.clone()))
        .send()
        .await
        .map_err(err("DeleteAlarms", &names.join(",")))?;
    progress(&format!("deleted alarm(s) {}", names.join(", ")));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pair: bool, topic: Option<&str>) -> Spec {
        Spec {
            stack: "dev".into(),
            pair,
            topic: topic.map_or(Topic::Keep, |t| Topic::Set(t.to_string())),
        }
    }

    fn built(spec: &Spec) -> Observed {
        Observed {
            alarms: catalog::alarms(spec.pair)
                .map(|a| AlarmObs {
                    state: "OK".into(),
                    ..wanted(spec, a, &Observed::default())
                })
                .collect(),
        }
    }

    #[test]
    fn a_new_stack_gets_every_alarm_and_a_built_one_nothing() {
        let s = spec(false, None);
        let p = plan(&s, &Observed::default());
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(
            p.iter()
                .all(|a| matches!(a, Action::Put { exists: false, .. }))
        );
        assert!(plan(&s, &built(&s)).is_empty());
        let pair = spec(true, None);
        assert!(plan(&pair, &Observed::default()).contains(&Action::Put {
            name: "natd-dev-no-standby".into(),
            exists: false
        }));
    }

    #[test]
    fn a_changed_topic_updates_and_a_pairs_alarm_goes_with_the_pair() {
        let s = spec(true, None);
        let topic = spec(true, Some("arn:aws:sns:eu-west-1:123456789012:ops"));
        let p = plan(&topic, &built(&s));
        assert_eq!(p.len(), 6);
        assert!(
            p.iter()
                .all(|a| matches!(a, Action::Put { exists: true, .. }))
        );
        // Without --alarm-topic the topic stays; `none` removes it.
        assert!(plan(&spec(true, None), &built(&topic)).is_empty());
        let off = Spec {
            topic: Topic::None,
            ..topic.clone()
        };
        assert_eq!(plan(&off, &built(&topic)).len(), 6);
        let single = spec(false, None);
        assert_eq!(
            plan(&single, &built(&s)),
            vec![Action::Delete {
                name: "natd-dev-no-standby".into()
            }]
        );
    }

    #[test]
    fn the_topic_must_be_an_sns_topic_arn() {
        assert!(parse_topic("arn:aws:sns:eu-west-1:123456789012:ops-alerts").is_ok());
        assert_eq!(parse_topic("none"), Ok(Topic::None));
        for bad in [
            "ops",
            "arn:aws:sqs:eu-west-1:123456789012:q",
            "arn:aws:sns:eu-west-1:1234:ops",
            "arn:aws:sns:eu-west-1:123456789012:",
        ] {
            let e = parse_topic(bad).expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
    }
}
