//! natd: the self-healing NAT-instance agent.
//!
//! On start it learns who it is from IMDSv2 (no AWS API call is needed to start), then
//! every `interval_secs` it makes the kernel forward and masquerade the VPC's CIDRs
//! (sysctls, its own iptables chains `NATD-POSTROUTING` and `NATD-FORWARD`, jumped to
//! first) and runs its probes: the data plane. Beside that, a control pass with its own
//! deadline re-reads the VPC's CIDRs, disables source/dest check on its ENI, takes over
//! the default route of every route table in its VPC tagged `natd:egress=<stack>` (only
//! once it forwards), holds the stack's Elastic IP if there is one, completes its Auto
//! Scaling launch lifecycle action and publishes its health in the `natd:health` tag.
//! After `unhealthy_after` consecutive failed *data-plane* passes it reports Unhealthy
//! so the group replaces it; AWS being unreachable is reported and retried with backoff,
//! never counted against the instance (see `natd::health`).
//!
//! Config: TOML at `/etc/natd/natd.toml` (or `--config`); see `natd.example.toml`.
//!
//! Side effects: sysctls under /proc/sys, iptables chains natd owns (never any other),
//! EC2 route tables carrying natd's tag, its own ENI's source/dest check, the tagged
//! Elastic IP, its Auto Scaling group's lifecycle action and health.
//!
//! On SIGTERM natd exits 0 and leaves kernel rules and routes as they are: the kernel
//! keeps forwarding without natd, so stopping or upgrading the agent never cuts egress;
//! when the instance itself goes, its routes turn blackhole and the replacement's natd
//! takes them over.
//!
//! `natd --report-unhealthy` tells the instance's Auto Scaling group it is Unhealthy and
//! exits: systemd runs it (natd-unhealthy.service, `OnFailure=`) when natd keeps
//! failing, so a broken agent gets its instance replaced instead of lingering.
//!
//! Exit status: 0 stopped by a signal (or `--once` healthy); 1 failure a restart may
//! fix (IMDS or AWS unreachable); 2 failure a restart will not fix (bad config, missing
//! permissions), so systemd's `RestartPreventExitStatus=2` stops retrying.

use clap::Parser;
use natd::agent::Agent;
use natd::config::{self, Config};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

/// Exit status for failures a restart will not fix.
const EXIT_PERMANENT: u8 = 2;
/// Exit status for failures a restart may fix.
const EXIT_RETRY: u8 = 1;

#[derive(Debug, Parser)]
#[command(version, about = "Self-healing NAT-instance agent")]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Validate the configuration and exit (0 valid, 2 invalid).
    #[arg(long)]
    check_config: bool,
    /// Run one reconcile pass and exit (0 healthy, 1 not).
    #[arg(long)]
    once: bool,
    /// Report this instance Unhealthy to its Auto Scaling group and exit (what
    /// natd-unhealthy.service runs when natd.service keeps failing).
    #[arg(long, conflicts_with_all = ["once", "check_config"])]
    report_unhealthy: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let explicit = args.config.as_os_str() != config::DEFAULT_PATH;
    let cfg = match Config::load(&args.config, explicit) {
        Ok(c) => c,
        // A broken configuration is one reason natd keeps failing: report anyway, with
        // the defaults (IMDS at its usual address, AWS's own endpoints).
        Err(e) if args.report_unhealthy => {
            warn!("{e}; reporting with the default configuration");
            Config::default()
        }
        Err(e) => {
            error!("{e}");
            notify_status(&format!("configuration error: {e}"));
            return ExitCode::from(EXIT_PERMANENT);
        }
    };
    if args.check_config {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    // The AWS SDK's HTTPS client panics when it finds no root certificate: say what is
    // missing instead, before anything starts.
    if rustls_native_certs::load_native_certs().certs.is_empty() {
        let e = "no CA certificates in the system trust store (/etc/pki/tls/certs, \
                 /etc/ssl/certs): install ca-certificates; natd needs them for HTTPS to AWS";
        error!("{e}");
        notify_status(e);
        return ExitCode::from(EXIT_PERMANENT);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::from(EXIT_RETRY);
        }
    };
    if args.report_unhealthy {
        return runtime.block_on(async {
            match natd::agent::report_unhealthy(&cfg).await {
                Ok(Some(group)) => {
                    error!("natd keeps failing: reported Unhealthy to {group} for replacement");
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    error!("natd keeps failing, and this instance is in no Auto Scaling group");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    error!("could not report Unhealthy: {e}");
                    ExitCode::from(if e.is_permanent() {
                        EXIT_PERMANENT
                    } else {
                        EXIT_RETRY
                    })
                }
            }
        });
    }
    runtime.block_on(run(cfg, args.once))
}

async fn run(cfg: Config, once: bool) -> ExitCode {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            error!("cannot install signal handlers");
            return ExitCode::from(EXIT_RETRY);
        }
    };
    notify_status("starting: reading identity from IMDS");
    let start = Agent::start(cfg, |msg| {
        warn!("{msg}");
        notify_status(msg);
    });
    let mut agent = tokio::select! {
        r = start => match r {
            Ok(a) => a,
            Err(e) => {
                error!("{e}");
                notify_status(&format!("failed: {e}"));
                return ExitCode::from(if e.is_permanent() { EXIT_PERMANENT } else { EXIT_RETRY });
            }
        },
        _ = term.recv() => return ExitCode::SUCCESS,
        _ = int.recv() => return ExitCode::SUCCESS,
    };
    if once {
        return run_once(&mut agent).await;
    }
    let watchdog = sd_notify::watchdog_enabled();
    let mut tick = tokio::time::interval(agent.config().interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Half the watchdog period, so one late ping does not get natd killed.
    let mut dog = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| w / 2));
    let mut ready_sent = false;
    // The control pass in flight, if any: polled beside the ticks, so a pass stuck on
    // AWS never delays the kernel checks.
    let mut control = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                agent.data_pass().await;
                if control.is_none() {
                    control = agent.start_control().map(Box::pin);
                }
                notify_status(&agent.status_line());
                if !ready_sent {
                    ready_sent = true;
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                }
                if watchdog.is_some() {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
            (cp, report) = async { control.as_mut().expect("guarded").await }, if control.is_some() => {
                control = None;
                let done = agent.finish_control(cp, report).await;
                notify_status(&agent.status_line());
                if let Some(fatal) = done.fatal {
                    return give_up(&mut agent, &fatal).await;
                }
            }
            _ = dog.tick(), if watchdog.is_some() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("stopping; kernel rules and routes stay in place");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    ExitCode::SUCCESS
}

/// `--once`: a data pass, a control pass, and a data pass again if the control pass
/// changed what the kernel needs; 0 when both halves are healthy.
async fn run_once(agent: &mut Agent) -> ExitCode {
    agent.data_pass().await;
    if let Some(job) = agent.start_control() {
        let (cp, report) = job.await;
        let done = agent.finish_control(cp, report).await;
        if let Some(fatal) = done.fatal {
            return give_up(agent, &fatal).await;
        }
    }
    notify_status(&agent.status_line());
    if agent.healthy() {
        ExitCode::SUCCESS
    } else {
        warn!("{}", agent.status_line());
        ExitCode::from(EXIT_RETRY)
    }
}

async fn give_up(agent: &mut Agent, fatal: &str) -> ExitCode {
    error!("giving up: {fatal}");
    notify_status(&format!("failed: {fatal}"));
    agent.abandon_launch().await;
    ExitCode::from(EXIT_PERMANENT)
}

/// Journal when stderr is connected to it (systemd sets JOURNAL_STREAM), else plain
/// stderr without timestamps (journald or the terminal adds its own).
fn init_logging() {
    if systemd_journal_logger::connected_to_journal()
        && let Ok(journal) = systemd_journal_logger::JournalLog::new()
        && journal.install().is_ok()
    {
        // tracing events reach `log` through tracing's "log" feature when no tracing
        // subscriber is installed. SDK internals log at debug and below.
        log::set_max_level(log::LevelFilter::Info);
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("NATD_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,aws_config=warn,aws_smithy_runtime=warn")
    });
    tracing_subscriber::fmt()
        .without_time()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
}

fn notify_status(msg: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(msg)]);
}
