//! The one waiter: polls until something is done, with exponential backoff and jitter
//! (backon), a stated limit, and progress reported as the state changes.
//!
//! Why not the SDK's waiters: EC2's (NatGatewayAvailable, InstanceTerminated, ...)
//! poll no sooner than every 15 s whatever is awaited and report nothing while they
//! wait; natd's takeover has no SDK waiter at all. One waiter serves every wait the
//! same way, and its first polls come within a second or two.

use super::Error;
use backon::BackoffBuilder;
use std::future::Future;
use std::time::{Duration, Instant};

/// First pause between polls; doubles up to [`MAX_DELAY`].
const MIN_DELAY: Duration = Duration::from_millis(500);
/// Longest pause between polls: NAT gateways take 1-3 minutes, so polling every 10 s
/// at most costs at most 10 s after they are done.
const MAX_DELAY: Duration = Duration::from_secs(10);
/// A line of progress at least this often, even when nothing changed.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// What one poll found.
#[derive(Debug)]
pub enum Poll<T> {
    /// Done.
    Ready(T),
    /// Not yet: what it is waiting for, in a few words ("nat-1 pending").
    Waiting(String),
}

/// Polls `probe` until it is [`Poll::Ready`], an error, or `limit` has passed
/// ([`Error::Timeout`] naming `what` and `target`). Reports progress through `progress`.
pub async fn until<T, F, Fut>(
    what: &'static str,
    target: &str,
    limit: Duration,
    progress: &mut dyn FnMut(&str),
    mut probe: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Poll<T>, Error>>,
{
    let start = Instant::now();
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(MIN_DELAY)
        .with_max_delay(MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build();
    let mut last = String::new();
    let mut last_said = start;
    loop {
        match probe().await? {
            Poll::Ready(v) => return Ok(v),
            Poll::Waiting(state) => {
                if state != last || last_said.elapsed() >= PROGRESS_EVERY {
                    progress(&format!(
                        "waiting for {what}: {state} ({} s)",
                        start.elapsed().as_secs()
                    ));
                    last = state;
                    last_said = Instant::now();
                }
            }
        }
        let elapsed = start.elapsed();
        if elapsed >= limit {
            return Err(Error::Timeout {
                what,
                target: target.to_string(),
                after: elapsed,
            });
        }
        let pause = delays.next().unwrap_or(MAX_DELAY).min(limit - elapsed);
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_until_ready_reporting_changes_once() {
        let mut n = 0;
        let mut said = Vec::new();
        let v = until(
            "thing",
            "t-1",
            Duration::from_secs(30),
            &mut |m| said.push(m.to_string()),
            || {
                n += 1;
                let k = n;
                async move {
                    Ok(if k < 3 {
                        Poll::Waiting("t-1 pending".to_string())
                    } else {
                        Poll::Ready(k)
                    })
                }
            },
        )
        .await
        .expect("ready");
        assert_eq!(v, 3);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("t-1 pending"));
    }

    #[tokio::test]
    async fn gives_up_at_the_limit_naming_what_it_waited_for() {
        let e = until::<(), _, _>(
            "NAT gateways",
            "nat-1",
            Duration::from_millis(300),
            &mut |_| {},
            || async { Ok(Poll::Waiting("nat-1 pending".to_string())) },
        )
        .await
        .expect_err("times out");
        assert!(
            matches!(
                e,
                Error::Timeout {
                    what: "NAT gateways",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("nat-1"));
    }
}
