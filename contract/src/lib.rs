//! The contract between `natctl` and `natd`: everything both binaries know, written
//! once. natctl builds what natd reads (its boot configuration, the tags of the route
//! tables and addresses it takes over, its IAM policy, its security group's ports); natd
//! writes what natctl reads (its health report); both talk to AWS and name its errors
//! the same way.
//!
//! - [`tags`]: tag keys, the stack-name rule, the default route natd owns.
//! - [`names`]: every name derived from a stack.
//! - [`policy`]: natd's IAM policy.
//! - [`boot`]: the boot configuration natctl writes into user data and natd reads.
//! - [`health`]: the report natd publishes in its `natd:health` tag.
//! - [`metrics`]: the CloudWatch metrics natd publishes and the alarms on them.
//! - [`pair`]: the hot standby pair's ports and heartbeat format.
//! - [`error`]: one conversion of AWS SDK errors.
//!
//! This crate has no I/O and no AWS client: both binaries, the tests and the exported
//! templates take it as data.

pub mod boot;
pub mod error;
pub mod health;
pub mod metrics;
pub mod names;
pub mod pair;
pub mod policy;
pub mod tags;

pub use error::ApiFailure;
pub use names::Names;
pub use policy::agent_policy;
pub use policy::agent_policy_with_tables;
pub use tags::*;
