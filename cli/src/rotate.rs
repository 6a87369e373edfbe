//! `natctl rotate`: a planned handover of a hot standby pair, with no connection lost.
//! Used to move the pair to a new AMI (setup updates the launch template; rotate
//! replaces the instances) or simply to renew them.
//!
//! 1. The standby is replaced first (terminated in its group, which launches a new one
//!    from the current template); rotate waits until natd on the new one reports it is
//!    the standby and hears the holder.
//! 2. The holder is asked to hand over (the `natd:handover` tag on it): its natd sends
//!    its whole connection table to the standby (conntrackd's bulk send), then says so in
//!    its heartbeats; the standby commits that state into its kernel and takes the egress
//!    addresses and every route over at once. rotate waits until every tagged table
//!    routes to the new holder, then removes the tag.
//! 3. The old holder, now the standby, is replaced the same way.

use crate::aws::{Clients, Error, names::Names, read, wait};
use natd_contract::{EGRESS_TAG, HANDOVER_TAG, HEALTH_TAG};
use serde::Serialize;
use std::time::Duration;

/// Longest wait for a replacement to boot and report as the standby.
const STANDBY_WAIT: Duration = Duration::from_secs(900);
/// Longest wait for the handover.
const HANDOVER_WAIT: Duration = Duration::from_secs(120);

/// One member of the pair as rotate sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// `i-...`
    pub id: String,
    /// Its Auto Scaling group.
    pub group: String,
    /// Its primary ENI, while it runs.
    pub eni: Option<String>,
    /// natd's `pair=` word (holder, standby), when it reported one.
    pub role: Option<String>,
    /// natd reported hearing its peer.
    pub hears_peer: bool,
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The stack.
    pub stack: String,
    /// Instances replaced, in order.
    pub replaced: Vec<String>,
    /// The holder before and after.
    pub holder_before: String,
    /// The holder after.
    pub holder_after: String,
    /// Seconds from the handover request to every route on the new holder.
    pub handover_secs: f64,
}

/// Why a rotation cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Not a pair.
    #[error(
        "stack {0} is not a hot standby pair (no Auto Scaling group {1}): rotate hands over between the two instances of `setup --env dev --ha`"
    )]
    NotAPair(String, String),
    /// The pair is not in a state to hand over.
    #[error("stack {stack}: {why}; rotate changes nothing until the pair is whole")]
    NotReady {
        /// The stack.
        stack: String,
        /// What is missing.
        why: String,
    },
    /// An AWS call failed.
    #[error(transparent)]
    Api(#[from] Error),
}

fn tag<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// The pair's members (running ones) and the ENI holding the first egress address.
async fn members(c: &Clients, stack: &str) -> Result<(Vec<Member>, Option<String>), Error> {
    let name = Names(stack).nat();
    let mut out = Vec::new();
    for group in [name.clone(), Names(stack).standby()] {
        let Some(g) = read::auto_scaling_group(c, &group).await? else {
            continue;
        };
        let ids: Vec<String> = g
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect();
        if ids.is_empty() {
            continue;
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        for i in read::instances(
            c,
            vec![crate::aws::names::filter("instance-id", &refs)],
            &group,
        )
        .await?
        {
            if i.state().and_then(|s| s.name()).map(|n| n.as_str()) != Some("running") {
                continue;
            }
            let health = tag(i.tags(), HEALTH_TAG).unwrap_or_default();
            let word = |k: &str| {
                health
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
                    .map(str::to_string)
            };
            out.push(Member {
                id: i.instance_id().unwrap_or_default().to_string(),
                group: group.clone(),
                eni: i
                    .network_interfaces()
                    .iter()
                    .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0))
                    .and_then(|n| n.network_interface_id())
                    .map(str::to_string),
                role: word("pair"),
                hears_peer: word("beat").as_deref() == Some("ok"),
            });
        }
    }
    let mut addresses: Vec<_> = read::stack_addresses(c, stack)
        .await?
        .into_iter()
        .filter(|a| {
            a.tags()
                .iter()
                .any(|t| t.key() == Some(EGRESS_TAG) && t.value() == Some(stack))
        })
        .collect();
    addresses.sort_by(|a, b| a.allocation_id().cmp(&b.allocation_id()));
    let lock = addresses
        .first()
        .and_then(|a| a.network_interface_id())
        .filter(|e| !e.is_empty())
        .map(str::to_string);
    Ok((out, lock))
}

/// The holder and the standby, when the pair is whole.
fn roles(members: &[Member], lock: Option<&str>) -> Result<(Member, Member), String> {
    let holder = members
        .iter()
        .find(|m| m.eni.is_some() && m.eni.as_deref() == lock)
        .ok_or("no instance holds the pair's egress address")?;
    let standby = members
        .iter()
        .find(|m| m.id != holder.id)
        .ok_or("the pair has no standby running")?;
    Ok((holder.clone(), standby.clone()))
}

/// Waits until a running instance other than `not` reports itself the standby and hears
/// its peer; returns it.
async fn new_standby(
    c: &Clients,
    stack: &str,
    not: &[String],
    progress: &mut dyn FnMut(&str),
) -> Result<Member, Error> {
    wait::until("a new standby", stack, STANDBY_WAIT, progress, || async {
        let (ms, _) = members(c, stack).await?;
        let found = ms
            .iter()
            .find(|m| !not.contains(&m.id) && m.role.as_deref() == Some("standby") && m.hears_peer);
        Ok(match found {
            Some(m) => wait::Poll::Ready(m.clone()),
            None => wait::Poll::Waiting(
                ms.iter()
                    .filter(|m| !not.contains(&m.id))
                    .map(|m| {
                        format!(
                            "{}: {}",
                            m.id,
                            m.role.as_deref().unwrap_or("natd not reporting yet")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        })
    })
    .await
}

async fn replace(c: &Clients, m: &Member) -> Result<(), Error> {
    c.asg
        .terminate_instance_in_auto_scaling_group()
        .instance_id(&m.id)
        .should_decrement_desired_capacity(false)
        .send()
        .await
        .map_err(crate::aws::err(
            "TerminateInstanceInAutoScalingGroup",
            &m.id,
        ))?;
    Ok(())
}

/// Rotates the pair of `stack`.
pub async fn rotate(
    c: &Clients,
    stack: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Outcome, Refused> {
    let standby = Names(stack).standby();
    if read::auto_scaling_group(c, &standby).await?.is_none() {
        return Err(Refused::NotAPair(stack.into(), standby));
    }
    let (ms, lock) = members(c, stack).await?;
    let (holder, standby) = roles(&ms, lock.as_deref()).map_err(|why| Refused::NotReady {
        stack: stack.into(),
        why,
    })?;
    if standby.role.as_deref() != Some("standby") || !standby.hears_peer {
        return Err(Refused::NotReady {
            stack: stack.into(),
            why: format!(
                "natd on the standby {} does not report a working standby (pair={}, heartbeats {})",
                standby.id,
                standby.role.as_deref().unwrap_or("none"),
                if standby.hears_peer {
                    "ok"
                } else {
                    "not heard"
                }
            ),
        });
    }
    let mut replaced = vec![];
    // 1. The standby first: nothing routes through it.
    progress(&format!("replacing the standby {}", standby.id));
    replace(c, &standby).await?;
    replaced.push(standby.id.clone());
    let fresh = new_standby(c, stack, &[standby.id.clone(), holder.id.clone()], progress).await?;
    progress(&format!(
        "{} is the standby; asking {} to hand over",
        fresh.id, holder.id
    ));
    // 2. The handover.
    let asked = std::time::Instant::now();
    c.ec2
        .create_tags()
        .resources(&holder.id)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(HANDOVER_TAG)
                .value(humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string())
                .build(),
        )
        .send()
        .await
        .map_err(crate::aws::err("CreateTags", &holder.id))?;
    let target = fresh.eni.clone().unwrap_or_default();
    let moved = wait::until(
        "the routes on the new holder",
        stack,
        HANDOVER_WAIT,
        progress,
        || async {
            let tables = read::tables_tagged(c, EGRESS_TAG, stack).await?;
            let (_, lock) = members(c, stack).await?;
            let waiting: Vec<&str> = tables
                .iter()
                .filter(|t| {
                    natd::aws::default_route(t).and_then(|r| r.network_interface_id())
                        != Some(target.as_str())
                })
                .filter_map(|t| t.route_table_id())
                .collect();
            Ok(
                if waiting.is_empty() && lock.as_deref() == Some(target.as_str()) {
                    wait::Poll::Ready(())
                } else {
                    wait::Poll::Waiting(format!("waiting: {}", waiting.join(", ")))
                },
            )
        },
    )
    .await;
    // The request is withdrawn whatever happened: a tag left behind would make that
    // instance hand over again the next time it holds.
    let untagged = c
        .ec2
        .delete_tags()
        .resources(&holder.id)
        .tags(aws_sdk_ec2::types::Tag::builder().key(HANDOVER_TAG).build())
        .send()
        .await
        .map_err(crate::aws::err("DeleteTags", &holder.id));
    moved?;
    untagged?;
    let handover_secs = asked.elapsed().as_secs_f64();
    progress(&format!(
        "{} holds the routes and the egress address ({handover_secs:.1} s after the request); replacing {}",
        fresh.id, holder.id
    ));
    // 3. The old holder, now the standby.
    replace(c, &holder).await?;
    replaced.push(holder.id.clone());
    let last = new_standby(
        c,
        stack,
        &[standby.id.clone(), holder.id.clone(), fresh.id.clone()],
        progress,
    )
    .await?;
    progress(&format!("{} is the standby", last.id));
    Ok(Outcome {
        stack: stack.into(),
        replaced,
        holder_before: holder.id,
        holder_after: fresh.id,
        handover_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, eni: &str, role: &str) -> Member {
        Member {
            id: id.into(),
            group: "g".into(),
            eni: Some(eni.into()),
            role: Some(role.into()),
            hears_peer: true,
        }
    }

    #[test]
    fn the_holder_is_whoever_holds_the_address() {
        let ms = vec![m("i-a", "eni-a", "standby"), m("i-b", "eni-b", "holder")];
        let (h, s) = roles(&ms, Some("eni-b")).expect("whole");
        assert_eq!((h.id.as_str(), s.id.as_str()), ("i-b", "i-a"));
        assert!(roles(&ms, None).is_err(), "no holder");
        assert!(roles(&ms[1..], Some("eni-b")).is_err(), "no standby");
    }
}
