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

/// Calls `call` until it succeeds, waiting (backoff with jitter, up to `limit`) while
/// it fails with an error `transient` says time will fix, e.g. a role IAM has not
/// propagated yet. `transient` says why, in words for a person (the progress line
/// reads "waiting for WHAT: WHY (N s)", with AWS's error code at the end, not its
/// message). Any other error ends it at once.
pub async fn retry_while<T, F, Fut>(
    what: &'static str,
    target: &str,
    limit: Duration,
    progress: &mut dyn FnMut(&str),
    transient: fn(&super::ApiFailure) -> Option<&'static str>,
    mut call: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    until(what, target, limit, progress, || {
        let attempt = call();
        async move {
            match attempt.await {
                Ok(v) => Ok(Poll::Ready(v)),
                Err(Error::Call { op, target, source }) => match transient(&source) {
                    Some(why) => Ok(Poll::Waiting(match &source.code {
                        Some(code) => format!("{why}; until then AWS answers {code}"),
                        None => why.to_string(),
                    })),
                    None => Err(Error::Call { op, target, source }),
                },
                Err(e) => Err(e),
            }
        }
    })
    .await
}

/// Runs one of the SDK's waiters (`wait`), reporting that it waits every
/// [`PROGRESS_EVERY`]: the SDK's waiters say nothing while they wait.
pub async fn sdk<T, E: std::fmt::Display>(
    what: &'static str,
    target: &str,
    limit: Duration,
    progress: &mut dyn FnMut(&str),
    wait: impl Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    let start = Instant::now();
    tokio::pin!(wait);
    let mut first = true;
    loop {
        let tick = if first {
            Duration::from_secs(2)
        } else {
            PROGRESS_EVERY
        };
        tokio::select! {
            r = &mut wait => {
                return r.map_err(|e| {
                    if start.elapsed() >= limit {
                        Error::Timeout { what, target: target.to_string(), after: start.elapsed() }
                    } else {
                        Error::Failed { what, target: target.to_string(), reason: e.to_string() }
                    }
                });
            }
            () = tokio::time::sleep(tick) => {
                first = false;
                progress(&format!("waiting for {what}: {target} ({} s)", start.elapsed().as_secs()));
            }
        }
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

    fn failure(code: &str) -> Error {
        Error::Call {
            op: "Op",
            target: "t".into(),
            source: crate::aws::ApiFailure {
                code: Some(code.into()),
                message: format!("{code}: said AWS"),
                timed_out: false,
            },
        }
    }

    #[tokio::test]
    async fn retries_only_what_time_fixes() {
        let transient: fn(&crate::aws::ApiFailure) -> Option<&'static str> =
            |e| e.is("NotYet").then_some("it takes a moment");
        let mut n = 0;
        let mut said = Vec::new();
        let v = retry_while(
            "x",
            "t",
            Duration::from_secs(30),
            &mut |m| said.push(m.to_string()),
            transient,
            || {
                n += 1;
                let k = n;
                async move { if k < 3 { Err(failure("NotYet")) } else { Ok(k) } }
            },
        )
        .await
        .expect("succeeds once time fixed it");
        assert_eq!(v, 3);
        // The wait is said in words, with AWS's code and without its message.
        assert!(
            said[0]
                .starts_with("waiting for x: it takes a moment; until then AWS answers NotYet ("),
            "{said:?}"
        );
        assert!(said.iter().all(|m| !m.contains("said AWS")), "{said:?}");
        let mut calls = 0;
        let e = retry_while::<(), _, _>(
            "x",
            "t",
            Duration::from_secs(30),
            &mut |_| {},
            transient,
            || {
                calls += 1;
                async { Err(failure("AccessDenied")) }
            },
        )
        .await
        .expect_err("not retried");
        assert_eq!(calls, 1);
        assert!(e.to_string().contains("AccessDenied"));
    }
}
