//! natd, the NAT-instance agent, as a library: the binary in `main.rs` is a thin loop
//! around [`agent::Agent`]; natctl uses [`contract`] for the tags and IAM policy.

pub mod agent;
pub mod aws;
pub mod cloud;
pub mod config;
pub mod contract;
pub mod health;
pub mod imds;
pub mod kernel;
pub mod metrics;
pub mod pair;
pub mod probe;
pub mod routes;
