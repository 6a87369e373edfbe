//! natctl: builds, inspects, diagnoses and removes NAT egress for VPC Lambda functions.
//!
//! Commands:
//! - `natctl policy [--stack NAME]`: prints the IAM policy natd needs for a stack, the
//!   same document natd's least-privilege test proves sufficient.
//!
//! Side effects: none yet (read-only commands only).
//!
//! Exit status: 0 success; 2 bad arguments.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "NAT egress for VPC Lambda functions: dev NAT instance or prod NAT gateways"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print the IAM policy the natd agent needs for a stack (JSON).
    Policy {
        /// Stack name (the value of the natd:egress tag on its route tables).
        #[arg(long, default_value = natd::contract::DEFAULT_STACK)]
        stack: String,
    },
}

fn main() -> ExitCode {
    match Args::parse().command {
        Cmd::Policy { stack } => {
            match serde_json::to_string_pretty(&natd::contract::agent_policy(&stack)) {
                Ok(s) => {
                    println!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("natctl: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
