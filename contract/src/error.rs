//! One conversion of AWS SDK errors, for both binaries: what AWS (or the way to it)
//! answered to one call, with the service's code and words.

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// Error codes that no retry will fix: permissions and credentials.
pub const PERMANENT_CODES: &[&str] = &[
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
    "AuthFailure",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "OptInRequired",
];

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
    /// A failure that is not AWS's answer (a request that could not be built).
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

    /// Whether AWS says the resource named does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code.as_deref().is_some_and(|c| {
            c.contains("NotFound") || c == "NoSuchEntity" || c == "ResourceNotFoundException"
        })
    }

    /// Whether retrying cannot help (missing permissions, bad credentials).
    pub fn is_permanent(&self) -> bool {
        self.code
            .as_deref()
            .is_some_and(|c| PERMANENT_CODES.contains(&c))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_say_what_a_retry_can_fix_and_what_is_gone() {
        let f = |code: &str| ApiFailure {
            code: Some(code.into()),
            message: format!("{code}: words"),
            timed_out: false,
        };
        assert!(f("UnauthorizedOperation").is_permanent());
        assert!(!f("RequestLimitExceeded").is_permanent());
        assert!(f("InvalidRouteTableID.NotFound").is_not_found());
        assert!(f("NoSuchEntity").is_not_found());
        assert!(!f("DependencyViolation").is_not_found());
        assert!(!ApiFailure::local("bad").is_permanent());
        assert_eq!(f("X").to_string(), "X: words");
    }
}
