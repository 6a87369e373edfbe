//! One error for every AWS interaction of natctl: a call that failed (named with its
//! operation and resource, carrying AWS's own words), a wait that ran out, a resource
//! that is not there, a resource that went into a failed state.

pub use natd_contract::ApiFailure;
use std::time::Duration;

/// An AWS interaction that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call failed.
    #[error("{op} {target}: {source}")]
    Call {
        /// The operation, e.g. `CreateNatGateway`.
        op: &'static str,
        /// The resource it named.
        target: String,
        /// What AWS answered.
        source: ApiFailure,
    },
    /// A wait ran out.
    #[error("{what} {target}: not done after {} s", after.as_secs())]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// For which resources.
        target: String,
        /// How long natctl waited.
        after: Duration,
    },
    /// A resource natctl needs is not there.
    #[error("{what} {target} not found")]
    Missing {
        /// Its kind.
        what: &'static str,
        /// Its id or name.
        target: String,
    },
    /// A resource went into a state it does not come back from.
    #[error("{what} {target}: {reason}")]
    Failed {
        /// Its kind.
        what: &'static str,
        /// Its id.
        target: String,
        /// AWS's reason.
        reason: String,
    },
}

/// Maps an SDK error to [`Error::Call`] for `op` on `target`.
pub fn err<E: Into<ApiFailure>>(op: &'static str, target: &str) -> impl FnOnce(E) -> Error {
    let target = target.to_string();
    move |e| Error::Call {
        op,
        target,
        source: e.into(),
    }
}

/// The call's result, or `None` when AWS says the resource it names does not exist.
pub fn found<T, E: Into<ApiFailure>>(
    r: Result<T, E>,
    op: &'static str,
    target: &str,
) -> Result<Option<T>, Error> {
    match r.map_err(Into::into) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(source) => Err(Error::Call {
            op,
            target: target.to_string(),
            source,
        }),
    }
}
