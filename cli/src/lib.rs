//! natctl: builds, inspects, diagnoses and removes NAT egress for VPC Lambda functions.
//! A library with a thin binary (`main.rs`), so benches and tests call it without
//! spawning a process.
//!
//! Commands: `setup` / `plan` (dev: one self-healing natd NAT instance; prod: one NAT
//! gateway per AZ; `--lambda` adds the function's wiring), `status`, `doctor`,
//! `teardown` (`--dry-run` shows what would go), `subnets`, `cost`, `policy`,
//! `completions`, `man`. `natctl --help` and `natctl man` say more.
//!
//! AWS access: the standard credential chain, `--region`, `--profile`,
//! `--endpoint-url` (or `AWS_ENDPOINT_URL`), with connect, read and call timeouts
//! (`--connect-timeout`, `--read-timeout`, `--call-timeout`): nothing waits forever.
//! `--output json` on every command, errors included (a JSON object on stdout, the
//! sentence on stderr).
//!
//! Side effects: `setup` and `teardown` change AWS resources (only those carrying the
//! stack's tag); every other command only reads.
//!
//! Exit status: 0 success; 1 an AWS call failed or timed out; 2 bad input, refused
//! before any change; 3 `status` found egress broken or `doctor` a problem.
//!
//! Layout: `cli` (clap types), `commands` (one handler per subcommand), `render`
//! (text and JSON), `error` (failures and exit statuses), `man`; `aws` (clients,
//! typed errors, names and tags, shared readers, one waiter); `parts` (the NAT
//! instance, the NAT gateways, the Lambda wiring: each owns its whole life); `stack`
//! (parts composed: setup, the dev/prod switch, teardown); `topology`, `status`,
//! `doctor`, `cost` (pure decisions with their readers).

pub mod aws;
pub mod cli;
pub mod commands;
pub mod cost;
pub mod doctor;
pub mod error;
pub mod export;
pub mod limits;
pub mod man;
pub mod parts;
pub mod render;
pub mod rotate;
pub mod stack;
pub mod status;
pub mod topology;

use clap::Parser;
use std::process::ExitCode;

/// natctl's whole run: parses the command line, runs the command, prints failures
/// (and JSON errors when asked) and returns the exit status.
pub fn main() -> ExitCode {
    let args = match cli::Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // clap prints help and version itself; a usage error is bad input (exit 2),
            // also a JSON object when JSON output was asked for.
            if e.use_stderr() && json_asked() {
                let message = e.render().to_string();
                let first = message.lines().next().unwrap_or_default();
                let f = error::Failure::BadInput(first.trim_start_matches("error: ").to_string());
                println!("{}", f.to_json());
            }
            e.exit();
        }
    };
    match commands::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("natctl: {f}");
            // A broken stack or a doctor finding is the command's result, already
            // printed as JSON; every other failure is printed as a JSON error.
            if args.output == cli::Output::Json && !matches!(f, error::Failure::Broken(_)) {
                println!("{}", f.to_json());
            }
            ExitCode::from(f.exit_code())
        }
    }
}

/// Whether the command line asks for JSON output (read raw: parsing failed).
fn json_asked() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .any(|w| w[0] == "--output" && w[1] == "json")
        || args.iter().any(|a| a == "--output=json")
}
