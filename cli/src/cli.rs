//! natctl's command line: every flag and subcommand, as clap types. Parsing only; the
//! handlers are in `commands`.

use clap::{Parser, Subcommand, ValueEnum};

/// natctl's arguments.
#[derive(Debug, Parser)]
#[command(
    name = "natctl",
    version,
    about = "NAT egress for VPC Lambda functions: dev NAT instance or prod NAT gateways",
    after_help = "Exit status: 0 success; 1 an AWS call failed (or timed out); 2 bad input, refused before any change; 3 egress broken (status) or something breaks (doctor; any finding with --strict)."
)]
pub struct Args {
    /// Output format. With json, errors too are a JSON object on stdout.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// AWS region (default: AWS_REGION, AWS_DEFAULT_REGION or the profile's).
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// AWS profile (default: AWS_PROFILE).
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// AWS endpoint URL for every service (also AWS_ENDPOINT_URL).
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Seconds to open a connection to AWS.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub connect_timeout: u64,
    /// Seconds one attempt of an AWS call may wait for its answer.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub read_timeout: u64,
    /// Seconds one AWS call may take, retries included: an endpoint that never answers
    /// fails the command after this long.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub call_timeout: u64,
    /// Seconds setup and teardown wait for another natctl working on the same stack
    /// (the stack's lock) before they give up.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 1200, value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub lock_wait: u64,
    /// Seconds natctl allows AWS to show a change to every reader (EC2 and IAM are
    /// eventually consistent): a run that takes over the lock of a run that died waits
    /// this long before it reads, so it sees what the dead run made.
    #[arg(long, global = true, value_name = "SECS", env = "NATCTL_SETTLE_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub settle: u64,
    /// The command.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// One JSON document on stdout.
    Json,
}

/// The two egress designs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Env {
    /// One self-healing NAT instance (natd) in an Auto Scaling group.
    Dev,
    /// One NAT gateway per AZ with AZ-local routes.
    Prod,
}

/// The kind of NAT gateway prod uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Gateway {
    /// One NAT gateway in a public subnet of each AZ, each AZ routed to its own.
    Zonal,
    /// One regional NAT gateway (AvailabilityMode=regional) for the whole VPC: it
    /// follows the workload into every AZ by itself and needs no public subnet.
    Regional,
}

/// A template format `natctl export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// An AWS CloudFormation template (JSON), also for Terraform's
    /// `aws_cloudformation_stack`.
    Cloudformation,
}

/// Who may use the Secrets Manager endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EndpointAccess {
    /// LambdaSG only.
    Lambda,
    /// The VPC's CIDRs.
    Vpc,
}

/// What the Secrets Manager endpoint's policy allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EndpointPolicy {
    /// The stack's secret, for the stack's execution role (and the secret's rotation
    /// function) only.
    Stack,
    /// This account's secrets, for this account's principals.
    Account,
    /// AWS's default: anything, for anyone.
    Open,
}

/// The resource policy put on the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SecretPolicy {
    /// Only the execution role (and the rotation function) may read the value.
    Role,
    /// As role, and the execution role only through the VPC's Secrets Manager endpoint.
    Endpoint,
    /// Remove the policy an earlier setup put (never one natctl did not write).
    Off,
}

/// A stack name, checked against the rule natd applies too.
fn stack_name(s: &str) -> Result<String, String> {
    natd_contract::check_stack_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// A subnet list: comma-separated ids.
#[derive(Debug, Clone, clap::Args)]
pub struct SubnetLists {
    /// Private subnets, comma-separated (e.g. subnet-0a,subnet-0b): exactly these, instead
    /// of the discovered ones (those without a route to an internet gateway).
    #[arg(long, value_delimiter = ',', value_name = "SUBNET,...")]
    pub private_subnets: Option<Vec<String>>,
    /// Public subnets, comma-separated: exactly these, instead of the discovered ones
    /// (those routing 0.0.0.0/0 to an internet gateway).
    #[arg(long, value_delimiter = ',', value_name = "SUBNET,...")]
    pub public_subnets: Option<Vec<String>>,
}

/// What setup and plan take.
#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// dev: one self-healing NAT instance; prod: one NAT gateway per AZ.
    #[arg(long, value_enum)]
    pub env: Env,
    /// prod: `zonal` (default) one NAT gateway per AZ, each in that AZ's public subnet,
    /// with your own Elastic IPs (stable egress addresses to allowlist); `regional` one
    /// regional NAT gateway for every AZ, with AWS-provided addresses and no public
    /// subnet needed. Switching either way is gap-free: the new gateway is available and
    /// every route moved before the old one goes.
    #[arg(long, value_enum)]
    pub gateway: Option<Gateway>,
    /// The VPC.
    #[arg(long)]
    pub vpc: String,
    /// Stack name: tags everything setup creates (natd:stack) and the route tables natd
    /// takes over (natd:egress). Lowercase letters, digits and '-', at most 32.
    #[arg(long = "name", default_value = natd_contract::DEFAULT_STACK, value_parser = stack_name)]
    pub stack: String,
    /// Which subnets to use.
    #[command(flatten)]
    pub subnets: SubnetLists,
    /// The natd AMI (default: the newest image of this account tagged natd:ami).
    #[arg(long)]
    pub ami: Option<String>,
    /// NAT instance type (dev). Without it: t4g.micro, or for a pair the smallest t4g
    /// type whose interface holds 1 + --egress-ips addresses.
    #[arg(long)]
    pub instance_type: Option<String>,
    /// dev: an Elastic IP natd holds, for a stable egress address.
    #[arg(long)]
    pub eip: bool,
    /// dev: a hot standby pair instead of one instance: two NAT instances, each in its
    /// own Auto Scaling group of one, in the same public subnet; the stack's Elastic IP
    /// on a secondary private address moves to the standby, which holds a copy of the
    /// connection state, when the active stops forwarding (about a second; open
    /// connections kept).
    #[arg(long)]
    pub ha: bool,
    /// dev --ha: the second instance in another AZ's public subnet: the pair survives
    /// an AZ loss, but a private address cannot follow across subnets: on failover the
    /// Elastic IP is re-associated with an address of the standby (same public address)
    /// and open connections reset.
    #[arg(long, requires = "ha")]
    pub ha_spread: bool,
    /// dev --ha: egress addresses (Elastic IPs, 1 to 8) the pair spreads new
    /// connections across: each allows about 64k connections to one destination.
    /// Without the flag a pair keeps what it has (one for a new pair); setup never
    /// releases one.
    #[arg(long, value_name = "N", requires = "ha", value_parser = clap::value_parser!(u32).range(1..=8))]
    pub egress_ips: Option<u32>,
    /// Wire this Lambda function into the VPC: LambdaSG, its private subnets, an
    /// execution role with the least it needs. One function per stack.
    #[arg(long, value_name = "FUNCTION")]
    pub lambda: Option<String>,
    /// The Secrets Manager secret the function reads (name or ARN): an interface
    /// endpoint with private DNS, SecretsManagerSG, GetSecretValue on it alone.
    #[arg(long, value_name = "SECRET_ARN_OR_NAME")]
    pub secret: Option<String>,
    /// Who may use the Secrets Manager endpoint. Its private DNS sends every workload
    /// of the VPC to it: `vpc` (default) admits the VPC's CIDRs, so every workload keeps
    /// Secrets Manager and IAM decides what each reads; `lambda` admits LambdaSG only,
    /// and every other workload of the VPC loses Secrets Manager.
    #[arg(long, value_enum, default_value_t = EndpointAccess::Vpc)]
    pub endpoint_access: EndpointAccess,
    /// What the stack's Secrets Manager endpoint lets through (its policy, a gate after
    /// IAM): `stack` (default) only the stack's secret for its execution role and the
    /// secret's rotation function, so nothing else in the VPC uses the endpoint and no
    /// outside credentials carry data out through it; `account` this account's secrets
    /// for this account's principals (other workloads of the VPC keep Secrets Manager);
    /// `open` AWS's default.
    #[arg(long, value_enum, default_value_t = EndpointPolicy::Stack)]
    pub endpoint_policy: EndpointPolicy,
    /// Put a resource policy on the secret: `role` denies reading its value to every
    /// principal but the execution role (and the secret's rotation function);
    /// `endpoint` also denies the execution role outside the VPC's endpoint
    /// (aws:SourceVpce). It denies only GetSecretValue: administrators keep managing
    /// the secret and this policy. `off` removes the policy an earlier setup put;
    /// without the flag the secret's policy is left as it is. A policy natctl did not
    /// write is never replaced.
    #[arg(long, value_enum)]
    pub secret_policy: Option<SecretPolicy>,
    /// The RDS instance the function uses: DatabaseSG admitting its port from
    /// LambdaSG, attached to it.
    #[arg(long, value_name = "ID", conflicts_with = "db_port")]
    pub db_instance: Option<String>,
    /// The database port, when the database is not an RDS instance to name.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub db_port: Option<u16>,
    /// VPC Flow Logs for the VPC, every accepted and rejected flow: `cloudwatch` to the
    /// stack's log group (/natd/STACK/vpc-flow-logs, with a delivery role that may
    /// write there only), `s3://BUCKET[/PREFIX]` to a bucket of yours, `off` removes
    /// the stack's. Without the flag they are left as they are; teardown removes them
    /// (the log group with its records).
    #[arg(long, value_name = "cloudwatch|s3://BUCKET[/PREFIX]|off")]
    pub flow_logs: Option<String>,
    /// Days CloudWatch Logs keeps the flow logs (one of the retentions it accepts:
    /// 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, ...).
    #[arg(long, value_name = "DAYS", default_value_t = 90)]
    pub flow_logs_retention: u32,
    /// An SNS topic the stack's CloudWatch alarms notify on ALARM and on OK (dev: the
    /// alarms on natd's metrics), `arn:aws:sns:REGION:ACCOUNT:TOPIC`; `none` stops
    /// notifying. Without the flag the alarms keep the topic they have.
    #[arg(long, value_name = "SNS_TOPIC_ARN|none")]
    pub alarm_topic: Option<String>,
    /// IPv6 egress beside the NAT, with no NAT at all: an egress-only internet gateway
    /// (free: no hourly or per-GB charge), `::/0` to it in the private route tables,
    /// the function's Ipv6AllowedForDualStack, LambdaSG's IPv6 egress. Destinations
    /// that answer on IPv6 are reached that way; IPv4 still goes through the NAT.
    /// Without the flag, what a previous run built is left as it is; teardown removes
    /// it.
    #[arg(long)]
    pub ipv6: bool,
    /// With --ipv6: associate an Amazon-provided IPv6 /56 with the VPC and a /64 with
    /// each private subnet that has none (it changes your network; the plan lists each
    /// association; teardown disassociates only those). Without it, setup refuses a VPC
    /// or private subnet without IPv6, naming it.
    #[arg(long, requires = "ipv6")]
    pub add_ipv6_cidrs: bool,
    /// When switching between dev and prod: seconds the old egress stays after the
    /// routes moved (route changes propagate, open connections finish).
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub drain_seconds: u64,
    /// A tag for everything setup creates, `KEY=VALUE`; repeatable.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Show the plan only.
    #[arg(long)]
    pub dry_run: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Print the IAM policy the natd agent needs for a stack (JSON).
    Policy {
        /// Stack name (the value of the natd:egress tag on its route tables).
        #[arg(long, default_value = natd_contract::DEFAULT_STACK, value_parser = stack_name)]
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
        /// Estimate each option with this share (percent) of the traffic leaving by IPv6
        /// through an egress-only internet gateway instead of NAT (destinations that
        /// speak IPv6).
        #[arg(long, value_name = "PERCENT")]
        ipv6_share: Option<f64>,
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
        /// Which subnets to use.
        #[command(flatten)]
        subnets: SubnetLists,
    },
    /// Build the egress for a VPC: show the plan, then apply it.
    Setup(SetupArgs),
    /// Show what setup would change, and change nothing.
    Plan(SetupArgs),
    /// Print the stack setup would build as an infrastructure-as-code template, and
    /// change nothing: the same arguments as setup (the VPC is read as setup reads it).
    /// natd's boot configuration names the private route tables (a template cannot tag
    /// tables it does not own) and its policy grants routes in exactly those.
    Export {
        /// The template's format.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// What to export: the stack, as setup takes it.
        #[command(flatten)]
        setup: SetupArgs,
    },
    /// Hand a hot standby pair (setup --env dev --ha) over to new instances with no
    /// connection lost: the standby is replaced first, then the holder hands its
    /// connection state, egress address and routes to it, then the old holder is
    /// replaced. Run it after setup changed the AMI or instance type.
    Rotate {
        /// Stack name.
        #[arg(long = "name", default_value = natd_contract::DEFAULT_STACK, value_parser = stack_name)]
        stack: String,
    },
    /// Show a stack's egress: its NAT instances or gateways and each managed route
    /// table's default route; exit status 3 when egress is broken, 2 when there is no
    /// such stack.
    Status {
        /// Stack name.
        #[arg(long = "name", default_value = natd_contract::DEFAULT_STACK, value_parser = stack_name)]
        stack: String,
    },
    /// Read a VPC the way AWS evaluates it and answer, for each VPC function: can it
    /// reach its secret, its database, the internet? Each "no" names the hop that breaks
    /// and the fix; risks and advice follow, grouped by severity. Exit status 3 when
    /// something breaks (with --strict: when anything is found).
    Doctor {
        /// The VPC.
        #[arg(long)]
        vpc: String,
        /// Look at this function (default: every function with a subnet in the VPC).
        #[arg(long, value_name = "FUNCTION")]
        lambda: Option<String>,
        /// Exit 3 for risks and advice too, not only for what breaks.
        #[arg(long)]
        strict: bool,
    },
    /// Remove exactly what setup created for a stack (found by name and natd:stack
    /// tag), in dependency order.
    Teardown {
        /// Stack name.
        #[arg(long = "name", default_value = natd_contract::DEFAULT_STACK, value_parser = stack_name)]
        stack: String,
        /// Show what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): natctl's, or a subcommand's (`natctl man setup`).
    Man {
        /// The subcommand.
        subcommand: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn subnet_lists_are_comma_separated() {
        let a = Args::try_parse_from([
            "natctl",
            "subnets",
            "--vpc",
            "vpc-1",
            "--private-subnets",
            "subnet-a,subnet-b",
        ])
        .expect("parses");
        let Cmd::Subnets { subnets, .. } = a.command else {
            panic!("not subnets")
        };
        assert_eq!(
            subnets.private_subnets,
            Some(vec!["subnet-a".to_string(), "subnet-b".to_string()])
        );
    }
}
