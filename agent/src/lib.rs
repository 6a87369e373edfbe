//! natd, the NAT-instance agent, as a library: the binary in `main.rs` is a thin loop
//! around [`agent::Agent`]; what natctl and natd share is the `natd-contract` crate.

/// What natctl and natd both know (the `natd-contract` crate).
pub use natd_contract as contract;

pub mod agent;
pub mod aws;
pub mod cloud;
pub mod cloudwatch;
pub mod config;
pub mod health;
pub mod imds;
pub mod kernel;
pub mod metrics;
pub mod pair;
pub mod probe;
pub mod routes;
