//! natctl: builds, inspects, diagnoses and removes NAT egress for VPC Lambda functions.
//!
//! Commands:
//! - `natctl policy [--stack NAME]`: the IAM policy natd needs for a stack, the same
//!   document natd's least-privilege test proves sufficient.
//! - `natctl cost [--env dev|prod] [--azs N] [--gb-per-month G] [--price KEY=VALUE]`:
//!   monthly estimate of dev and prod egress side by side, with the prices stated.
//! - `natctl subnets --vpc VPC [--env dev|prod] [--private-subnets ..] [--public-subnets ..]`:
//!   the VPC's public and private subnets per AZ as setup will use them, or the reason
//!   the VPC cannot get NAT egress (unknown VPC, foreign subnet, AZ without public subnet).
//! - `natctl setup --env dev --vpc VPC [--name STACK] [--ami AMI] [--dry-run]`: the dev
//!   egress, one natd NAT instance in an Auto Scaling group: security group admitting
//!   the private subnets, instance role with exactly natd's policy, launch template
//!   (IMDSv2 required, hop limit 1), group with natd's launch hook, and the
//!   `natd:egress` tag on the private route tables. Shows the plan, then applies it;
//!   re-running prints "No changes necessary." `natctl plan` is `setup --dry-run`.
//! - `natctl status --name STACK`: NAT instances and each tagged route table's default
//!   route (blackholes flagged); exit status 3 when egress is broken.
//! - `natctl teardown --name STACK`: removes exactly what setup created for the stack
//!   (by name and `natd:stack` tag), the route-table tags and natd's default routes,
//!   in dependency order; a second run finds nothing.
//! - `natctl completions SHELL`, `natctl man`: generated from these definitions.
//!
//! AWS access: the standard credential chain, `--region`, `--profile`, and
//! `--endpoint-url` (or `AWS_ENDPOINT_URL`), so the same binary runs against AWS and the
//! emulator. `--output json` on every command. Side effects: none (read-only commands).
//!
//! Exit status: 0 success; 1 an AWS call failed; 2 bad input (arguments, a VPC that
//! cannot get NAT as asked), refused before any change; 3 `status` found egress broken.

mod cost;
mod dev;
mod discover;
mod doctor;
mod lambda;
mod prod;
mod status;
mod teardown;
mod topology;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "NAT egress for VPC Lambda functions: dev NAT instance or prod NAT gateways"
)]
struct Args {
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// AWS region (default: from the environment or profile).
    #[arg(long, global = true)]
    region: Option<String>,
    /// AWS profile.
    #[arg(long, global = true)]
    profile: Option<String>,
    /// AWS endpoint URL for every service (also AWS_ENDPOINT_URL).
    #[arg(long, global = true)]
    endpoint_url: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// The two egress designs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Env {
    /// One self-healing NAT instance (natd) in an Auto Scaling group.
    Dev,
    /// One NAT gateway per AZ with AZ-local routes.
    Prod,
}

#[derive(Debug, clap::Args)]
struct SetupArgs {
    /// dev: one self-healing NAT instance; prod: one NAT gateway per AZ.
    #[arg(long, value_enum)]
    env: Env,
    /// The VPC.
    #[arg(long)]
    vpc: String,
    /// Stack name: tags everything setup creates (natd:stack) and the route tables natd
    /// takes over (natd:egress).
    #[arg(long = "name", default_value = natd::contract::DEFAULT_STACK)]
    stack: String,
    /// Private subnets (default: discovered, those without a route to an IGW).
    #[arg(long, value_delimiter = ',')]
    private_subnets: Option<Vec<String>>,
    /// Public subnets (default: discovered).
    #[arg(long, value_delimiter = ',')]
    public_subnets: Option<Vec<String>>,
    /// The natd AMI (default: the newest image of this account tagged natd:ami).
    #[arg(long)]
    ami: Option<String>,
    /// NAT instance type (dev).
    #[arg(long, default_value = "t4g.micro")]
    instance_type: String,
    /// dev: an Elastic IP natd holds, for a stable egress address.
    #[arg(long)]
    eip: bool,
    /// Wire this Lambda function into the VPC: LambdaSG, its private subnets, an
    /// execution role with the least it needs.
    #[arg(long, value_name = "FUNCTION")]
    lambda: Option<String>,
    /// The Secrets Manager secret the function reads (name or ARN): an interface
    /// endpoint with private DNS, SecretsManagerSG, GetSecretValue on it alone.
    #[arg(long, value_name = "SECRET_ARN_OR_NAME")]
    secret: Option<String>,
    /// The RDS instance the function uses: DatabaseSG admitting its port from
    /// LambdaSG, attached to it.
    #[arg(long, value_name = "ID", conflicts_with = "db_port")]
    db_instance: Option<String>,
    /// The database port, when the database is not an RDS instance to name.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    db_port: Option<u16>,
    /// When switching between dev and prod: seconds the old egress stays after the
    /// routes moved (route changes propagate, open connections finish).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    drain_seconds: u64,
    /// Show the plan only.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print the IAM policy the natd agent needs for a stack (JSON).
    Policy {
        /// Stack name (the value of the natd:egress tag on its route tables).
        #[arg(long, default_value = natd::contract::DEFAULT_STACK)]
        stack: String,
    },
    /// Estimate the monthly cost of dev and prod egress, side by side.
    Cost {
        /// The environment to highlight.
        #[arg(long, value_enum)]
        env: Option<Env>,
        /// Availability zones with private subnets.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
        azs: u32,
        /// Data sent to the internet through NAT, GB per month.
        #[arg(long, default_value_t = 100.0)]
        gb_per_month: f64,
        /// Override a price, e.g. `--price instance_hour=0.0042` (t4g.nano); repeatable.
        #[arg(long = "price", value_name = "KEY=VALUE")]
        prices: Vec<String>,
    },
    /// Show a VPC's public and private subnets per AZ, as setup will use them.
    Subnets {
        /// The VPC.
        #[arg(long)]
        vpc: String,
        /// Check for this environment (prod needs a public subnet in every AZ with
        /// private subnets; dev needs one public subnet).
        #[arg(long, value_enum, default_value_t = Env::Prod)]
        env: Env,
        /// Private subnets to use instead of discovering them.
        #[arg(long, value_delimiter = ',')]
        private_subnets: Option<Vec<String>>,
        /// Public subnets to use instead of discovering them.
        #[arg(long, value_delimiter = ',')]
        public_subnets: Option<Vec<String>>,
    },
    /// Build the egress for a VPC: show the plan, then apply it.
    Setup(SetupArgs),
    /// Show what setup would change, and change nothing.
    Plan(SetupArgs),
    /// Show a stack's egress: its NAT instances and each private route table's default
    /// route; exit status 3 when egress is broken.
    Status {
        /// Stack name.
        #[arg(long = "name", default_value = natd::contract::DEFAULT_STACK)]
        stack: String,
    },
    /// Find the mistakes that keep a VPC Lambda function from its database, its secret
    /// or the internet, in any VPC; each with its fix. Exit status 3 when any is found.
    Doctor {
        /// The VPC.
        #[arg(long)]
        vpc: String,
        /// Look at this function (default: every function with a subnet in the VPC).
        #[arg(long, value_name = "FUNCTION")]
        lambda: Option<String>,
    },
    /// Remove exactly what setup created for a stack (found by name and natd:stack tag).
    Teardown {
        /// Stack name.
        #[arg(long = "name", default_value = natd::contract::DEFAULT_STACK)]
        stack: String,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

/// Exit status for bad input (arguments, or a VPC that cannot get NAT as asked).
const EXIT_BAD_INPUT: u8 = 2;
/// Exit status for AWS failures.
const EXIT_AWS: u8 = 1;
/// Exit status of `status` when egress is broken.
const EXIT_BROKEN: u8 = 3;

/// A failed command: what to print and the exit status.
struct Failure(String, u8);

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure(s, EXIT_BAD_INPUT)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg, code)) => {
            eprintln!("natctl: {msg}");
            ExitCode::from(code)
        }
    }
}

/// The SDK configuration: the standard chain plus the global flags. The one place
/// natctl builds it.
async fn sdk_config(args: &Args) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(natd::cloud::http_client());
    if let Some(r) = &args.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    if let Some(p) = &args.profile {
        loader = loader.profile_name(p);
    }
    if let Some(e) = &args.endpoint_url {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(format!("cannot start the runtime: {e}"), EXIT_AWS))
}

fn run(args: Args) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`natctl ... | head`) is not an error worth reporting.
    let mut emit = |s: String| {
        let _ = writeln!(out, "{s}");
    };
    match &args.command {
        Cmd::Policy { stack } => emit(
            serde_json::to_string_pretty(&natd::contract::agent_policy(stack))
                .map_err(|e| e.to_string())?,
        ),
        Cmd::Cost {
            env,
            azs,
            gb_per_month,
            prices,
        } => {
            let (env, azs, gb_per_month) = (*env, *azs, *gb_per_month);
            if !gb_per_month.is_finite() || gb_per_month < 0.0 {
                return Err(format!(
                    "--gb-per-month {gb_per_month}: must be a non-negative number"
                )
                .into());
            }
            let mut p = cost::Prices::default();
            for assignment in prices {
                p.set(assignment)?;
            }
            let dev = cost::dev(&p, azs, gb_per_month);
            let prod = cost::prod(&p, azs, gb_per_month);
            match args.output {
                Output::Json => emit(
                    serde_json::to_string_pretty(&serde_json::json!({
                        "azs": azs, "gb_per_month": gb_per_month, "prices": p,
                        "hours_per_month": cost::HOURS_PER_MONTH, "dev": dev, "prod": prod,
                    }))
                    .map_err(|e| e.to_string())?,
                ),
                Output::Text => emit(render_cost(&dev, &prod, env, azs, gb_per_month, &p)),
            }
        }
        Cmd::Subnets {
            vpc,
            env,
            private_subnets,
            public_subnets,
        } => {
            let facts = runtime()?.block_on(async {
                let ec2 = aws_sdk_ec2::Client::new(&sdk_config(&args).await);
                discover::vpc(&ec2, vpc).await
            });
            let facts = facts.map_err(|e| match e {
                discover::Error::NoSuchVpc(_) => Failure(e.to_string(), EXIT_BAD_INPUT),
                discover::Error::Api { .. } => Failure(e.to_string(), EXIT_AWS),
            })?;
            let topo = topology::classify(
                &facts,
                private_subnets.as_deref(),
                public_subnets.as_deref(),
                *env == Env::Prod,
            )
            .map_err(|e| e.to_string())?;
            match args.output {
                Output::Json => {
                    emit(serde_json::to_string_pretty(&topo).map_err(|e| e.to_string())?)
                }
                Output::Text => {
                    let mut s = format!("{}\n", topo.vpc_id);
                    for (az, a) in &topo.azs {
                        s.push_str(&format!(
                            "  {az}: public [{}] private [{}] via [{}]\n",
                            a.public.join(", "),
                            a.private.join(", "),
                            a.private_tables
                                .iter()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    for t in &topo.shared_private_tables {
                        s.push_str(&format!(
                            "  {t} serves private subnets in several AZs; prod splits it per AZ\n"
                        ));
                    }
                    emit(s.trim_end().to_string());
                }
            }
        }
        Cmd::Setup(a) => setup(&args, a, a.dry_run, &mut emit)?,
        Cmd::Plan(a) => setup(&args, a, true, &mut emit)?,
        Cmd::Status { stack } => {
            let st = runtime()?.block_on(async {
                let clients = dev::Clients::new(&sdk_config(&args).await);
                status::read(&clients, stack).await
            });
            let st = st.map_err(aws_failure)?;
            match args.output {
                Output::Json => emit(serde_json::to_string_pretty(&st).map_err(|e| e.to_string())?),
                Output::Text => {
                    let mut s = format!(
                        "stack {}: egress {}\n",
                        st.stack,
                        if st.healthy { "ok" } else { "BROKEN" }
                    );
                    for i in &st.instances {
                        s.push_str(&format!(
                            "  NAT instance {} ({}): {}, {}, ENI {}\n",
                            i.id,
                            i.az,
                            i.lifecycle,
                            i.health,
                            i.eni.as_deref().unwrap_or("none (not running)")
                        ));
                    }
                    for g in &st.gateways {
                        s.push_str(&format!(
                            "  NAT gateway {} ({}): {}, {}\n",
                            g.id,
                            g.az,
                            g.state,
                            g.public_ip.as_deref().unwrap_or("no address")
                        ));
                    }
                    if st.instances.is_empty() && st.gateways.is_empty() {
                        s.push_str("  no NAT instance or NAT gateway\n");
                    }
                    for t in &st.route_tables {
                        s.push_str(&format!(
                            "  route table {}{}: 0.0.0.0/0 -> {} ({}){}{}\n",
                            t.id,
                            if t.azs.is_empty() {
                                String::new()
                            } else {
                                format!(" [{}]", t.azs.join(", "))
                            },
                            t.target.as_deref().unwrap_or("none"),
                            t.state.as_deref().unwrap_or("no route"),
                            if t.cross_az { ", crosses AZs" } else { "" },
                            if t.ok { "" } else { "  <- broken" }
                        ));
                    }
                    if let Some(l) = &st.lambda {
                        s.push_str(&format!(
                            "  Lambda {}: execution role {}, subnets [{}], LambdaSG {}, Secrets Manager endpoint {}{}\n",
                            l.function,
                            if l.role_attached { "attached" } else { "NOT attached" },
                            l.subnets.join(", "),
                            if l.lambda_sg_attached { "attached" } else { "NOT attached" },
                            l.endpoint.as_deref().unwrap_or("none"),
                            if l.endpoint_private_dns { " with private DNS" } else { " WITHOUT private DNS" },
                        ));
                    }
                    if st.route_tables.is_empty() {
                        s.push_str(&format!(
                            "  no route table tagged {}={} or {}={}\n",
                            natd::contract::EGRESS_TAG,
                            st.stack,
                            prod::ROUTES_TAG,
                            st.stack
                        ));
                    }
                    emit(s.trim_end().to_string());
                }
            }
            if !st.healthy {
                return Err(Failure("egress is broken".into(), EXIT_BROKEN));
            }
        }
        Cmd::Doctor { vpc, lambda } => {
            let facts = runtime()?.block_on(async {
                let clients = dev::Clients::new(&sdk_config(&args).await);
                doctor::read(&clients, vpc, lambda.as_deref()).await
            });
            let facts = facts.map_err(|e| match e {
                doctor::Invalid::Api(e) => aws_failure(e),
                other => bad_input(other),
            })?;
            let findings = doctor::diagnose(&facts);
            match args.output {
                Output::Json => emit(
                    serde_json::to_string_pretty(&serde_json::json!({
                        "vpc": vpc,
                        "functions": facts.functions.iter().map(|f| &f.name).collect::<Vec<_>>(),
                        "findings": findings,
                    }))
                    .map_err(|e| e.to_string())?,
                ),
                Output::Text if findings.is_empty() => emit(format!(
                    "{vpc}: no problem found ({} function(s) looked at).",
                    facts.functions.len()
                )),
                Output::Text => {
                    let mut s = format!("{vpc}: {} problem(s)\n", findings.len());
                    for f in &findings {
                        s.push_str(&format!("\n- {}\n  Fix: {}\n", f.problem, f.fix));
                    }
                    emit(s.trim_end().to_string());
                }
            }
            if !findings.is_empty() {
                return Err(Failure(
                    format!("{} problem(s) found", findings.len()),
                    EXIT_BROKEN,
                ));
            }
        }
        Cmd::Teardown { stack } => {
            let output = args.output;
            let removed = runtime()?.block_on(async {
                let clients = dev::Clients::new(&sdk_config(&args).await);
                teardown::run(&clients, stack, &mut |m: &str| eprintln!("natctl: {m}")).await
            });
            let removed = removed.map_err(aws_failure)?;
            match output {
                Output::Json => {
                    emit(serde_json::json!({"stack": stack, "removed": removed}).to_string())
                }
                Output::Text if removed.is_empty() => {
                    emit(format!("Nothing to remove for stack {stack}."))
                }
                Output::Text => {
                    let mut s = format!("Removed from stack {stack}:\n");
                    for r in &removed {
                        s.push_str(&format!("  - {} {}\n", r.kind, r.id));
                    }
                    emit(s.trim_end().to_string());
                }
            }
        }
        Cmd::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut Args::command(), "natctl", &mut buf);
            emit(String::from_utf8_lossy(&buf).into_owned());
        }
        Cmd::Man => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(Args::command())
                .render(&mut buf)
                .map_err(|e| e.to_string())?;
            emit(String::from_utf8_lossy(&buf).into_owned());
        }
    }
    Ok(())
}

fn render_cost(
    dev: &cost::Estimate,
    prod: &cost::Estimate,
    env: Option<Env>,
    azs: u32,
    gb: f64,
    p: &cost::Prices,
) -> String {
    let mark = |e: Env| if env == Some(e) { " *" } else { "" };
    let mut s = format!(
        "Monthly estimate, {azs} AZ(s), {gb} GB/month through NAT (USD, {} h/month)\n\n{:<22} {:>10} {:>10}\n",
        cost::HOURS_PER_MONTH,
        "",
        format!("dev{}", mark(Env::Dev)),
        format!("prod{}", mark(Env::Prod)),
    );
    for (d, q) in dev.lines.iter().zip(&prod.lines) {
        let item = if d.item == q.item {
            d.item.clone()
        } else {
            format!("{} / {}", d.item, q.item)
        };
        s.push_str(&format!("{item:<22} {:>10.2} {:>10.2}\n", d.usd, q.usd));
    }
    s.push_str(&format!(
        "{:<22} {:>10.2} {:>10.2}\n",
        "total", dev.total_usd, prod.total_usd
    ));
    s.push_str(&format!(
        "\nPrices used (override with --price KEY=VALUE): nat_gateway_hour={} nat_gateway_gb={} \
public_ipv4_hour={} instance_hour={} ebs_gb_month={} ebs_gb={} cross_az_gb={}\n\
Internet data transfer out is charged the same for both and not included.",
        p.nat_gateway_hour,
        p.nat_gateway_gb,
        p.public_ipv4_hour,
        p.instance_hour,
        p.ebs_gb_month,
        p.ebs_gb,
        p.cross_az_gb
    ));
    s
}

fn bad_input(e: impl std::fmt::Display) -> Failure {
    Failure(e.to_string(), EXIT_BAD_INPUT)
}

fn aws_failure(e: impl std::fmt::Display) -> Failure {
    Failure(e.to_string(), EXIT_AWS)
}

/// The egress part of a setup plan.
enum Egress {
    Dev(Box<(dev::Spec, dev::Observed, Vec<dev::Action>)>),
    Prod(Box<(prod::Spec, prod::Observed, Vec<prod::Action>)>),
}

/// setup and plan: validate everything before any change, then diff, render, apply,
/// and read back.
fn setup(
    args: &Args,
    a: &SetupArgs,
    dry_run: bool,
    emit: &mut impl FnMut(String),
) -> Result<(), Failure> {
    if a.stack.is_empty()
        || !a
            .stack
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(bad_input(format!(
            "--name {:?}: use letters, digits and '-'",
            a.stack
        )));
    }
    if a.eip && a.env == Env::Prod {
        return Err(bad_input(
            "--eip is for --env dev (prod NAT gateways always get one Elastic IP per AZ)",
        ));
    }
    if a.lambda.is_none() && (a.secret.is_some() || a.db_instance.is_some() || a.db_port.is_some())
    {
        return Err(bad_input(
            "--secret, --db-instance and --db-port wire a function: name it with --lambda",
        ));
    }
    runtime()?.block_on(async {
        let clients = dev::Clients::new(&sdk_config(args).await);
        let facts = discover::vpc(&clients.ec2, &a.vpc)
            .await
            .map_err(|e| match e {
                discover::Error::NoSuchVpc(_) => bad_input(e),
                discover::Error::Api { .. } => aws_failure(e),
            })?;
        let topo = topology::classify(
            &facts,
            a.private_subnets.as_deref(),
            a.public_subnets.as_deref(),
            a.env == Env::Prod,
        )
        .map_err(bad_input)?;
        // Every name the user gave is checked before anything changes.
        let lambda_spec = match &a.lambda {
            None => None,
            Some(function) => Some(lambda_spec(args, a, &clients, &topo, function).await?),
        };
        let egress = match a.env {
            Env::Dev => plan_dev(a, &clients, &facts, &topo).await?,
            Env::Prod => plan_prod(a, &clients, &facts, &topo).await?,
        };
        let wiring = match lambda_spec {
            None => None,
            Some(spec) => {
                let o = lambda::read(&clients, &spec).await.map_err(aws_failure)?;
                let actions = lambda::plan(&spec, &o);
                Some((spec, o, actions))
            }
        };
        let mut lines = Vec::new();
        let (env, spec_json, changes_json, n) = match &egress {
            Egress::Dev(d) => {
                let (spec, _, actions) = &**d;
                lines.extend(actions.iter().map(|x| describe(x, spec)));
                ("dev", json(spec)?, json(actions)?, actions.len())
            }
            Egress::Prod(p) => {
                let (_, _, actions) = &**p;
                lines.extend(actions.iter().map(describe_prod));
                ("prod", json(&p.0)?, json(actions)?, actions.len())
            }
        };
        let mut total = n;
        let mut lambda_json = serde_json::Value::Null;
        if let Some((spec, _, actions)) = &wiring {
            lines.extend(actions.iter().map(|x| describe_lambda(x, spec)));
            total += actions.len();
            lambda_json = serde_json::json!({"spec": spec, "changes": actions});
        }
        match args.output {
            Output::Json => emit(
                serde_json::json!({"stack": a.stack, "env": env, "spec": spec_json, "changes": changes_json,
                    "lambda": lambda_json, "applied": !dry_run && total > 0})
                .to_string(),
            ),
            Output::Text if total == 0 => emit("No changes necessary.".to_string()),
            Output::Text => {
                let mut s = format!("Plan for stack {} ({env}) in {}:\n", a.stack, a.vpc);
                for l in &lines {
                    s.push_str(&format!("  + {l}\n"));
                }
                emit(s.trim_end().to_string());
            }
        }
        if total == 0 || dry_run {
            return Ok(());
        }
        let mut progress = |m: &str| eprintln!("natctl: {m}");
        match &egress {
            Egress::Dev(d) if !d.2.is_empty() => {
                let (spec, o, actions) = &**d;
                dev::apply(&clients, spec, o, actions, &mut progress)
                    .await
                    .map_err(aws_failure)?;
                let after = dev::read(&clients, spec).await.map_err(aws_failure)?;
                still_needed(&dev::plan(spec, &after).map_err(bad_input)?)?;
            }
            Egress::Prod(p) if !p.2.is_empty() => {
                let (spec, o, actions) = &**p;
                prod::apply(&clients, spec, o, actions, &mut progress)
                    .await
                    .map_err(aws_failure)?;
                let after = prod::read(&clients, spec).await.map_err(aws_failure)?;
                let left: Vec<_> = prod::plan(spec, &after)
                    .map_err(bad_input)?
                    .into_iter()
                    .filter(|x| !matches!(x, prod::Action::MoveSubnet { .. }))
                    .collect();
                still_needed(&left)?;
            }
            _ => {}
        }
        if let Some((spec, o, actions)) = &wiring
            && !actions.is_empty()
        {
            lambda::apply(&clients, spec, o, actions)
                .await
                .map_err(aws_failure)?;
            let after = lambda::read(&clients, spec).await.map_err(aws_failure)?;
            still_needed(&lambda::plan(spec, &after))?;
        }
        if args.output == Output::Text {
            emit(format!(
                "Applied {total} change(s); stack {} is in place.",
                a.stack
            ));
        }
        Ok(())
    })
}

fn json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, Failure> {
    serde_json::to_value(v).map_err(|e| aws_failure(e.to_string()))
}

fn still_needed<T: std::fmt::Debug>(left: &[T]) -> Result<(), Failure> {
    if left.is_empty() {
        Ok(())
    } else {
        Err(aws_failure(format!(
            "after applying, these changes are still needed: {left:?}"
        )))
    }
}

/// The Lambda wiring's spec, after checking that the function, secret and DB instance
/// exist.
async fn lambda_spec(
    args: &Args,
    a: &SetupArgs,
    clients: &dev::Clients,
    topo: &topology::Topology,
    function: &str,
) -> Result<lambda::Spec, Failure> {
    let r = lambda::resolve(
        clients,
        &a.vpc,
        function,
        a.secret.as_deref(),
        a.db_instance.as_deref(),
    )
    .await
    .map_err(|e| match e {
        lambda::Invalid::Api(e) => aws_failure(e),
        other => bad_input(other),
    })?;
    let region = r
        .function_arn
        .split(':')
        .nth(3)
        .map(str::to_string)
        .or_else(|| args.region.clone())
        .unwrap_or_default();
    Ok(lambda::Spec {
        stack: a.stack.clone(),
        vpc: a.vpc.clone(),
        region,
        function: function.to_string(),
        function_arn: r.function_arn,
        secret_arn: r.secret_arn,
        db_instance: a.db_instance.clone(),
        db_port: a.db_port.or(r.db_port),
        subnets: topo.azs.values().flat_map(|z| z.private.clone()).collect(),
        endpoint_subnets: topo
            .azs
            .values()
            .filter_map(|z| z.private.first().cloned())
            .collect(),
    })
}

async fn plan_dev(
    a: &SetupArgs,
    clients: &dev::Clients,
    facts: &topology::Facts,
    topo: &topology::Topology,
) -> Result<Egress, Failure> {
    let ami = match &a.ami {
        Some(ami) => ami.clone(),
        None => newest_natd_ami(&clients.ec2).await?,
    };
    let private: Vec<&String> = topo.azs.values().flat_map(|z| &z.private).collect();
    let spec = dev::Spec {
        stack: a.stack.clone(),
        vpc: a.vpc.clone(),
        public_subnets: topo.azs.values().flat_map(|z| z.public.clone()).collect(),
        private_cidrs: facts
            .subnets
            .iter()
            .filter(|s| private.contains(&&s.id))
            .map(|s| s.cidr.clone())
            .collect(),
        private_tables: topo
            .azs
            .values()
            .flat_map(|z| z.private_tables.clone())
            .collect(),
        ami,
        instance_type: a.instance_type.clone(),
        eip: a.eip,
        drain_secs: a.drain_seconds,
    };
    let observed = dev::read(clients, &spec).await.map_err(aws_failure)?;
    let actions = dev::plan(&spec, &observed).map_err(bad_input)?;
    Ok(Egress::Dev(Box::new((spec, observed, actions))))
}

async fn plan_prod(
    a: &SetupArgs,
    clients: &dev::Clients,
    facts: &topology::Facts,
    topo: &topology::Topology,
) -> Result<Egress, Failure> {
    let main = facts.tables.iter().find(|t| t.main).map(|t| t.id.clone());
    let mut azs = std::collections::BTreeMap::new();
    for (az, z) in &topo.azs {
        let Some(public_subnet) = z.public.first().cloned() else {
            continue;
        };
        let private = z
            .private
            .iter()
            .map(|id| {
                let table = facts
                    .subnets
                    .iter()
                    .find(|s| &s.id == id)
                    .and_then(|s| s.route_table.clone())
                    .or_else(|| main.clone())
                    .unwrap_or_default();
                prod::PrivateSubnet {
                    id: id.clone(),
                    shared: topo.shared_private_tables.contains(&table),
                    table,
                }
            })
            .collect();
        azs.insert(
            az.clone(),
            prod::AzSpec {
                public_subnet,
                private,
            },
        );
    }
    let spec = prod::Spec {
        stack: a.stack.clone(),
        vpc: a.vpc.clone(),
        azs,
        drain_secs: a.drain_seconds,
    };
    let observed = prod::read(clients, &spec).await.map_err(aws_failure)?;
    let actions = prod::plan(&spec, &observed).map_err(bad_input)?;
    Ok(Egress::Prod(Box::new((spec, observed, actions))))
}

fn describe_lambda(a: &lambda::Action, spec: &lambda::Spec) -> String {
    use lambda::{Action, Group};
    let sg = |g: Group| match g {
        Group::Lambda => format!("LambdaSG {}", g.name(&spec.stack)),
        Group::Database => format!("DatabaseSG {}", g.name(&spec.stack)),
        Group::SecretsManager => format!("SecretsManagerSG {}", g.name(&spec.stack)),
    };
    match a {
        Action::CreateGroup { group } => format!("security group {}", sg(*group)),
        Action::AdmitFromLambda { group, port } => {
            format!("{}: admit TCP {port} from LambdaSG only", sg(*group))
        }
        Action::CreateEndpoint => format!(
            "interface endpoint {} in {} with private DNS",
            spec.service(),
            spec.endpoint_subnets
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Action::ModifyEndpoint => format!(
            "endpoint {}: private DNS on, subnets and SecretsManagerSG as planned",
            spec.service()
        ),
        Action::CreateRole => format!("execution role {} (trusted by Lambda)", spec.role()),
        Action::PutRolePolicy => format!(
            "policy on {}: GetSecretValue on {}, network interfaces, its log group",
            spec.role(),
            spec.secret_arn.as_deref().unwrap_or("no secret")
        ),
        Action::AttachDatabaseGroup { db_instance } => {
            format!("add DatabaseSG to DB instance {db_instance}")
        }
        Action::RecordPrevious => format!(
            "tag {} with its current role and VPC config (teardown restores them)",
            spec.function
        ),
        Action::UpdateFunction => format!(
            "{}: role {}, subnets {}, LambdaSG",
            spec.function,
            spec.role(),
            spec.subnets.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

fn describe_prod(a: &prod::Action) -> String {
    let table = |t: &prod::TableRef| match t {
        prod::TableRef::Existing(id) => id.clone(),
        prod::TableRef::Split { az, .. } => format!("the new table of {az}"),
    };
    match a {
        prod::Action::AllocateAddress { az } => format!("Elastic IP for the NAT gateway of {az}"),
        prod::Action::CreateNatGateway { az, subnet } => {
            format!("NAT gateway for {az} in {subnet}")
        }
        prod::Action::WaitForGateways { azs } => {
            format!(
                "wait until the NAT gateway(s) of {} are available",
                azs.join(", ")
            )
        }
        prod::Action::CreateAzTable { az, from } => {
            format!("route table for {az} (its subnets share {from} with other AZs)")
        }
        prod::Action::ReleaseFromNatd { route_table } => format!(
            "untag {route_table} {} (natd lets go of it)",
            natd::contract::EGRESS_TAG
        ),
        prod::Action::SetDefaultRoute { route_table, az } => {
            format!("{}: 0.0.0.0/0 -> NAT gateway of {az}", table(route_table))
        }
        prod::Action::TagRoutes { route_table } => {
            format!("tag {route_table} {}", prod::ROUTES_TAG)
        }
        prod::Action::MoveSubnet { subnet, az, from } => {
            format!("move {subnet} from {from} to the new table of {az}")
        }
        prod::Action::RemoveDevEgress { parts } => {
            format!("remove the dev egress: {}", parts.join(", "))
        }
    }
}

fn describe(a: &dev::Action, spec: &dev::Spec) -> String {
    let name = spec.name();
    match a {
        dev::Action::CreateSecurityGroup => format!("security group {name}"),
        dev::Action::AuthorizeIngress { cidrs } => format!("admit {} on {name}", cidrs.join(", ")),
        dev::Action::CreateRole => format!("IAM role {name} (trusted by EC2)"),
        dev::Action::PutRolePolicy => format!("natd's policy on role {name}"),
        dev::Action::CreateInstanceProfile => format!("instance profile {name} with role {name}"),
        dev::Action::CreateLaunchTemplate => {
            format!(
                "launch template {name}: {} {}, IMDSv2 required, hop limit 1",
                spec.ami, spec.instance_type
            )
        }
        dev::Action::UpdateLaunchTemplate => format!(
            "new default version of {name}: {} {}",
            spec.ami, spec.instance_type
        ),
        dev::Action::CreateGroup => format!(
            "Auto Scaling group {name} in {}",
            spec.public_subnets.join(", ")
        ),
        dev::Action::PutLifecycleHook => format!("launch lifecycle hook {} on {name}", dev::HOOK),
        dev::Action::ScaleToOne => format!("{name}: min = max = desired = 1"),
        dev::Action::AllocateAddress => format!(
            "Elastic IP tagged {}={} (natd holds it: a stable egress address)",
            natd::contract::EGRESS_TAG,
            spec.stack
        ),
        dev::Action::TagRouteTable { route_table } => {
            format!(
                "tag {route_table} {}={} (natd takes over its default route)",
                natd::contract::EGRESS_TAG,
                spec.stack
            )
        }
        dev::Action::WaitForTakeover => {
            "wait until natd holds every tagged table's default route".to_string()
        }
        dev::Action::RemoveProdEgress { parts } => {
            format!("remove the prod egress: {}", parts.join(", "))
        }
    }
}

/// The newest AMI of this account tagged `natd:ami` (as packer/natd.pkr.hcl tags it).
async fn newest_natd_ami(ec2: &aws_sdk_ec2::Client) -> Result<String, Failure> {
    let images = ec2
        .describe_images()
        .owners("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag-key")
                .values("natd:ami")
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            aws_failure(format!(
                "DescribeImages: {}",
                natd::cloud::ApiError::from(e)
            ))
        })?;
    let mut found: Vec<(&str, &str)> = images
        .images()
        .iter()
        .filter_map(|i| Some((i.creation_date()?, i.image_id()?)))
        .collect();
    found.sort();
    found
        .last()
        .map(|(_, id)| id.to_string())
        .ok_or_else(|| bad_input("no AMI tagged natd:ami in this account and region: build one (README, \"The AMI\") or pass --ami"))
}
