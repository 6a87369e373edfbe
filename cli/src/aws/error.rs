//! One error for every AWS interaction of natctl: a call that failed (named with its
//! operation and resource, carrying AWS's own words), a wait that ran out, a resource
//! that is not there, a resource that went into a failed state.

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use std::time::Duration;

/// What AWS (or the way to it) answered to one call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    /// The service's error code, e.g. `DependencyViolation`.
    pub code: Option<String>,
    /// The service's message (with its code), or what went wrong on the way.
    pub message: String,
    /// No answer came within the timeouts.
    pub timed_out: bool,
}

impl ApiFailure {
    /// A failure that is not AWS's answer (a request natctl could not build).
    pub fn local(message: impl Into<String>) -> Self {
        Self {
            code: None,
            message: message.into(),
            timed_out: false,
        }
    }

    /// Whether AWS answered with `code`.
    pub fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

impl<E, R> From<SdkError<E, R>> for ApiFailure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    fn from(e: SdkError<E, R>) -> Self {
        let timed_out = match &e {
            SdkError::TimeoutError(_) => true,
            SdkError::DispatchFailure(d) => d.is_timeout(),
            _ => false,
        };
        let code = e.code().map(str::to_string);
        let message = match (e.code(), e.message()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_string(),
            _ if timed_out => "no answer within the timeout".to_string(),
            // Connection failures: the innermost cause says what happened.
            _ => {
                let chain = DisplayErrorContext(&e).to_string();
                chain
                    .rsplit(": ")
                    .next()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .unwrap_or(chain)
            }
        };
        Self {
            code,
            message,
            timed_out,
        }
    }
}

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
        Err(e)
            if e.code.as_deref().is_some_and(|c| {
                c.contains("NotFound") || c == "NoSuchEntity" || c == "ResourceNotFoundException"
            }) =>
        {
            Ok(None)
        }
        Err(source) => Err(Error::Call {
            op,
            target: target.to_string(),
            source,
        }),
    }
}
