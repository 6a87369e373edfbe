//! One handler per subcommand, a file each: each validates its input, reads, decides (through the
//! pure functions of the other modules), acts, and hands data to `render`. Progress
//! goes to stderr; results to stdout.

mod cost;
mod doctor;
mod rotate;
mod setup;
mod status;
mod subnets;
mod teardown;

use crate::aws::{self, Clients, Settings};
use crate::cli::{Args, Cmd, Output};
use crate::error::Failure;
use clap::CommandFactory;
use std::io::Write;
use std::time::Duration;

/// Runs the command `args` names.
pub fn run(args: &Args) -> Result<(), Failure> {
    let settings = Settings {
        region: args.region.clone(),
        profile: args.profile.clone(),
        endpoint_url: args.endpoint_url.clone(),
        connect_timeout: Duration::from_secs(args.connect_timeout),
        read_timeout: Duration::from_secs(args.read_timeout),
        call_timeout: Duration::from_secs(args.call_timeout),
    };
    let ctx = Ctx {
        output: args.output,
        settings,
        lock_wait: Duration::from_secs(args.lock_wait),
        settle: Duration::from_secs(args.settle),
    };
    match &args.command {
        Cmd::Policy { stack } => emit(&crate::render::json(&natd_contract::agent_policy(stack))?),
        Cmd::Cost {
            env,
            azs,
            gb_per_month,
            prices,
            ipv6_share,
        } => cost::cost(&ctx, *env, *azs, *gb_per_month, prices, *ipv6_share),
        Cmd::Subnets { vpc, env, subnets } => {
            ctx.block_on(subnets::subnets_cmd(&ctx, vpc, *env, subnets))
        }
        Cmd::Setup(a) => ctx.block_on(setup::setup(&ctx, a, a.dry_run)),
        Cmd::Plan(a) => ctx.block_on(setup::setup(&ctx, a, true)),
        Cmd::Export { format, setup: a } => ctx.block_on(setup::export(&ctx, *format, a)),
        Cmd::Status { stack } => ctx.block_on(status::status_cmd(&ctx, stack)),
        Cmd::Rotate { stack } => ctx.block_on(rotate::rotate_cmd(&ctx, stack)),
        Cmd::Doctor {
            vpc,
            lambda,
            strict,
        } => ctx.block_on(doctor::doctor_cmd(&ctx, vpc, lambda.as_deref(), *strict)),
        Cmd::Teardown { stack, dry_run } => ctx.block_on(teardown::teardown(&ctx, stack, *dry_run)),
        Cmd::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut Args::command(), "natctl", &mut buf);
            emit(&String::from_utf8_lossy(&buf))
        }
        Cmd::Man { subcommand } => emit(&crate::man::page(subcommand.as_deref())?),
    }
}

/// What every handler needs.
struct Ctx {
    output: Output,
    settings: Settings,
    lock_wait: Duration,
    settle: Duration,
}

impl Ctx {
    fn block_on<F: std::future::Future<Output = Result<(), Failure>>>(
        &self,
        f: F,
    ) -> Result<(), Failure> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Internal(format!("cannot start the runtime: {e}")))?
            .block_on(f)
    }

    async fn clients(&self) -> Result<Clients, Failure> {
        if let Some(p) = aws::missing_profile(&self.settings).await {
            return Err(Failure::BadInput(format!(
                "the config profile ({p}) could not be found in ~/.aws/config or ~/.aws/credentials (--profile, AWS_PROFILE)"
            )));
        }
        Ok(Clients::connect(&self.settings).await)
    }

    fn aws(&self) -> impl Fn(aws::Error) -> Failure + '_ {
        move |e| Failure::aws(e, &self.settings)
    }

    fn json(&self) -> bool {
        self.output == Output::Json
    }

    /// Runs `work` holding the stack's lock: two natctl on one stack never change it at
    /// once. The lock goes when `work` ends, however it ends.
    async fn locked<T>(
        &self,
        c: &Clients,
        stack: &str,
        work: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        let lock = aws::lock::Lock::acquire(c, stack, self.lock_wait, &mut progress)
            .await
            .map_err(self.aws())?;
        if lock.taken_over() && !self.settle.is_zero() {
            // The dead run's last changes may not show in reads yet (eventual
            // consistency): reading at once could plan them again.
            progress(&format!(
                "the last run on this stack stopped mid-way; giving AWS {} s to show its changes (--settle)",
                self.settle.as_secs()
            ));
            tokio::time::sleep(self.settle).await;
        }
        let result = work.await;
        let released = lock.release().await.map_err(self.aws());
        let value = result?;
        released?;
        Ok(value)
    }
}

/// Prints `s` on stdout. A closed pipe (`natctl ... | head`) is not worth reporting.
fn emit(s: &str) -> Result<(), Failure> {
    let _ = writeln!(std::io::stdout().lock(), "{s}");
    Ok(())
}

/// Progress, on stderr.
fn progress(m: &str) {
    eprintln!("natctl: {m}");
}
