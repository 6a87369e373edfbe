//! One natctl at a time per stack, with a lock AWS holds: a launch template named
//! `natd-STACK-lock`. Launch template names are unique in a region, so its creation
//! either succeeds (the lock is ours) or fails with `AlreadyExists` (someone holds it).
//! It names its holder and an expiry time in its tags; the holder renews the expiry
//! while it works, and a lock whose holder died expires after [`TTL`] (at once when the
//! holder was a natctl on this same host that is no longer running). Released (the
//! template deleted) when the command ends.

use super::names::{Names, ec2_tag, ec2_tags, tag_value};
use super::read;
use super::wait::{self, Poll};
use super::{ApiFailure, Clients, Error, err, found};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a lock outlives its last renewal: a holder that died frees the stack after
/// this long.
pub const TTL: Duration = Duration::from_secs(180);
/// How often the holder renews: three renewals fit in [`TTL`], so one missed call does
/// not lose the lock.
const RENEW_EVERY: Duration = Duration::from_secs(60);
/// Tag naming the holder (host, process).
const HOLDER_TAG: &str = "natd:lock-holder";
/// Tag with the expiry, in seconds since the epoch.
const EXPIRES_TAG: &str = "natd:lock-expires";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "natctl".into())
}

/// Whether `holder` (`host:pid`) was a natctl on this host that is gone: its lock need
/// not wait for the expiry (a killed run, on the same machine).
fn died_here(holder: &str) -> bool {
    let Some((host, pid)) = holder.rsplit_once(':') else {
        return false;
    };
    if host != hostname() || pid.parse::<u32>().is_err() {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|comm| comm.trim() != "natctl")
        .unwrap_or(true)
}

/// The lock template's content. EC2 requires `LaunchTemplateData` (MissingParameter
/// without it), and the SDK's query serializer writes nothing for an empty structure,
/// so the template carries one harmless setting. Nothing is ever launched from it.
fn lock_template_data() -> aws_sdk_ec2::types::RequestLaunchTemplateData {
    aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
        .disable_api_termination(false)
        .build()
}

/// CreateLaunchTemplate's idempotency token for one try: the holder and the expiry it
/// writes (a new try writes a new expiry, and EC2 refuses a token reused with other
/// parameters). At most 128 ASCII characters, as EC2 allows.
fn client_token(me: &str, expires: &str) -> String {
    let mut token = format!("natctl-{expires}-{me}");
    token.retain(|c| c.is_ascii_graphic());
    token.truncate(128);
    token
}

/// A held lock; renewed in the background until [`Lock::release`].
#[derive(Debug)]
pub struct Lock {
    c: Clients,
    id: String,
    name: String,
    renew: tokio::task::JoinHandle<()>,
    taken_over: bool,
}

/// Who holds a lock we could not take.
fn holder(t: &aws_sdk_ec2::types::LaunchTemplate) -> (String, u64) {
    let tag = |k| tag_value(t.tags(), k).unwrap_or_default();
    (
        tag(HOLDER_TAG).to_string(),
        tag(EXPIRES_TAG).parse().unwrap_or(0),
    )
}

impl Lock {
    /// Takes the stack's lock, waiting up to `limit` for another holder to finish.
    pub async fn acquire(
        c: &Clients,
        stack: &str,
        limit: Duration,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Lock, Error> {
        let name = format!("{}-lock", Names(stack).nat());
        let me = format!("{}:{}", hostname(), std::process::id());
        let taken_over = std::sync::atomic::AtomicBool::new(false);
        let id = wait::until("the stack's lock", &name, limit, progress, || async {
            let expires = (now() + TTL.as_secs()).to_string();
            let r = c
                .ec2
                .create_launch_template()
                .launch_template_name(&name)
                // The SDK retries a create whose answer it lost: with the same token
                // EC2 answers the template the first try made, instead of
                // AlreadyExists for a lock that is in fact ours.
                .client_token(client_token(&me, &expires))
                .launch_template_data(lock_template_data())
                .tag_specifications(ec2_tags(
                    aws_sdk_ec2::types::ResourceType::LaunchTemplate,
                    stack,
                    &name,
                    &[(HOLDER_TAG, &me), (EXPIRES_TAG, &expires)],
                ))
                .send()
                .await
                .map_err(ApiFailure::from);
            match r {
                Ok(r) => Ok(Poll::Ready(
                    r.launch_template()
                        .and_then(|t| t.launch_template_id())
                        .unwrap_or_default()
                        .to_string(),
                )),
                Err(e) if e.code.as_deref().is_some_and(|c| c.contains("AlreadyExists")) => {
                    let held = read::launch_templates_named(c, &name).await?;
                    let Some(t) = held.first() else {
                        return Ok(Poll::Waiting("released".into()));
                    };
                    let (who, expires) = holder(t);
                    if who == me {
                        // Made by an earlier try of this very run whose answer was
                        // lost (a token that EC2 no longer matched): it is ours.
                        return Ok(Poll::Ready(
                            t.launch_template_id().unwrap_or_default().to_string(),
                        ));
                    }
                    if expires < now() || died_here(&who) {
                        // Its holder died: take it over.
                        let id = t.launch_template_id().unwrap_or_default();
                        let r = c.ec2.delete_launch_template().launch_template_id(id).send().await;
                        found(r, "DeleteLaunchTemplate", id)?;
                        taken_over.store(true, std::sync::atomic::Ordering::Relaxed);
                        return Ok(Poll::Waiting(format!("{who} left it; taking it over")));
                    }
                    Ok(Poll::Waiting(format!(
                        "held by natctl {who} (another run on this stack); it expires in {} s unless renewed",
                        expires.saturating_sub(now())
                    )))
                }
                Err(source) => Err(Error::Call {
                    op: "CreateLaunchTemplate",
                    target: name.clone(),
                    source,
                }),
            }
        })
        .await?;
        let renew = {
            let c = c.clone();
            let id = id.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    // A failed renewal is retried at the next tick; three fit in TTL.
                    let _ = c
                        .ec2
                        .create_tags()
                        .resources(&id)
                        .tags(ec2_tag(EXPIRES_TAG, &(now() + TTL.as_secs()).to_string()))
                        .send()
                        .await;
                }
            })
        };
        Ok(Lock {
            c: c.clone(),
            id,
            name,
            renew,
            taken_over: taken_over.into_inner(),
        })
    }

    /// Whether this lock was taken over from a holder that died (rather than found
    /// free): its last changes may be moments old.
    pub fn taken_over(&self) -> bool {
        self.taken_over
    }

    /// Removes the stack's lock when its holder is gone (expired, or a natctl of this
    /// host that no longer runs): a run that had nothing to change leaves no stale lock
    /// behind. A live holder's lock is left alone.
    pub async fn clear_stale(c: &Clients, stack: &str) -> Result<(), Error> {
        let name = format!("{}-lock", Names(stack).nat());
        for t in read::launch_templates_named(c, &name).await? {
            let (who, expires) = holder(&t);
            if expires < now() || died_here(&who) {
                let id = t.launch_template_id().unwrap_or_default();
                let r = c
                    .ec2
                    .delete_launch_template()
                    .launch_template_id(id)
                    .send()
                    .await;
                found(r, "DeleteLaunchTemplate", id)?;
            }
        }
        Ok(())
    }

    /// Releases the lock.
    pub async fn release(self) -> Result<(), Error> {
        self.renew.abort();
        self.c
            .ec2
            .delete_launch_template()
            .launch_template_id(&self.id)
            .send()
            .await
            .map_err(err("DeleteLaunchTemplate", &self.name))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_template_is_never_empty_and_its_token_fits() {
        let data = lock_template_data();
        assert_eq!(data.disable_api_termination(), Some(false));
        let long = "h".repeat(300);
        let t = client_token(&format!("{long}:12"), "1790000000");
        assert_eq!(t.len(), 128);
        assert!(t.starts_with("natctl-1790000000-"));
        assert_ne!(
            client_token("host:1", "1790000000"),
            client_token("host:1", "1790000060"),
            "each try has its own token"
        );
    }

    #[test]
    fn a_holder_gone_from_this_host_is_dead_others_are_not_judged() {
        let me = format!("{}:{}", hostname(), std::process::id());
        // This test process is not natctl: a lock naming it counts as left behind.
        assert!(died_here(&me));
        assert!(died_here(&format!("{}:{}", hostname(), u32::MAX)));
        assert!(
            !died_here("another-host:1"),
            "another host's holder waits for expiry"
        );
        assert!(!died_here("garbage"));
    }
}
