//! How a natctl command fails: the kind decides the exit status (0 ok, 1 AWS, 2 bad
//! input, 3 broken), the message is one sentence, and with `--output json` the same
//! failure is a JSON object on stdout.

use crate::aws;
use serde_json::json;
use std::time::Duration;

/// Exit status for AWS failures and other failures at run time.
pub const EXIT_AWS: u8 = 1;
/// Exit status for bad input (arguments, a VPC that cannot get NAT as asked): refused
/// before any change; retrying will not help.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit status when egress is broken (status) or a problem is found (doctor).
pub const EXIT_BROKEN: u8 = 3;

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The input names something that does not exist, or asks for something that
    /// cannot be built; nothing was changed.
    #[error("{0}")]
    BadInput(String),
    /// An AWS call failed.
    #[error("{0}")]
    Aws(aws::Error),
    /// An AWS call got no answer within the timeouts.
    #[error(
        "{op} {target}: no answer from {endpoint} within {} s (see --call-timeout, --read-timeout, --connect-timeout)",
        after.as_secs()
    )]
    Unanswered {
        /// The call.
        op: &'static str,
        /// Its resource.
        target: String,
        /// The endpoint it went to.
        endpoint: String,
        /// The call timeout.
        after: Duration,
    },
    /// Egress is broken, or doctor found a problem.
    #[error("{0}")]
    Broken(String),
    /// Something failed that is neither AWS nor the input.
    #[error("{0}")]
    Internal(String),
}

impl Failure {
    /// The failure for an AWS error, with the endpoint and timeout named when the call
    /// got no answer.
    pub fn aws(e: aws::Error, s: &aws::Settings) -> Self {
        match e {
            aws::Error::Call { op, target, source } if source.timed_out => Failure::Unanswered {
                op,
                target,
                endpoint: s.endpoint(),
                after: s.call_timeout,
            },
            e => Failure::Aws(e),
        }
    }

    /// The exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::BadInput(_) => EXIT_BAD_INPUT,
            Failure::Broken(_) => EXIT_BROKEN,
            Failure::Aws(_) | Failure::Unanswered { .. } | Failure::Internal(_) => EXIT_AWS,
        }
    }

    /// The kind, as JSON names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::BadInput(_) => "bad_input",
            Failure::Aws(_) => "aws",
            Failure::Unanswered { .. } => "timeout",
            Failure::Broken(_) => "broken",
            Failure::Internal(_) => "internal",
        }
    }

    /// `{"error": {"kind", "message", "exit_status", ...}}`, with the call, resource
    /// and AWS error code when there are.
    pub fn to_json(&self) -> serde_json::Value {
        let mut e = json!({
            "kind": self.kind(),
            "message": self.to_string(),
            "exit_status": self.exit_code(),
        });
        match self {
            Failure::Aws(aws::Error::Call { op, target, source }) => {
                e["operation"] = json!(op);
                e["target"] = json!(target);
                e["code"] = json!(source.code);
            }
            Failure::Aws(aws::Error::Timeout {
                what,
                target,
                after,
            }) => {
                e["waiting_for"] = json!(what);
                e["target"] = json!(target);
                e["after_secs"] = json!(after.as_secs());
            }
            Failure::Aws(
                aws::Error::Missing { target, .. } | aws::Error::Failed { target, .. },
            ) => {
                e["target"] = json!(target);
            }
            Failure::Unanswered {
                op,
                target,
                endpoint,
                after,
            } => {
                e["operation"] = json!(op);
                e["target"] = json!(target);
                e["endpoint"] = json!(endpoint);
                e["after_secs"] = json!(after.as_secs());
            }
            _ => {}
        }
        json!({ "error": e })
    }
}
