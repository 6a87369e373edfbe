//! The AWS base every part of natctl stands on, and the only place that builds SDK
//! clients: the clients with their timeouts ([`Clients::connect`]), one typed error
//! ([`Error`]), the names and tags natctl gives things ([`names`]), the readers several
//! parts share ([`read`]), and one waiter ([`wait`]).

pub mod error;
pub mod lock;
pub mod names;
pub mod read;
pub mod wait;

pub use error::{ApiFailure, Error, err, found};

use std::time::Duration;

/// How natctl reaches AWS: the global flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--region`, else the environment or profile.
    pub region: Option<String>,
    /// `--profile`, else `AWS_PROFILE`.
    pub profile: Option<String>,
    /// `--endpoint-url`, else `AWS_ENDPOINT_URL` (read by the SDK).
    pub endpoint_url: Option<String>,
    /// Time to open a connection.
    pub connect_timeout: Duration,
    /// Time one attempt of a call may wait for its answer.
    pub read_timeout: Duration,
    /// Time one call may take, retries included.
    pub call_timeout: Duration,
}

impl Settings {
    /// The endpoint the calls go to, for messages.
    pub fn endpoint(&self) -> String {
        self.endpoint_url
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .unwrap_or_else(|| match &self.region {
                Some(r) => format!("the AWS endpoints of {r}"),
                None => "the AWS endpoints".to_string(),
            })
    }
}

/// The profile `--profile` or `AWS_PROFILE` names, when it is in neither
/// `~/.aws/config` nor `~/.aws/credentials`: refused as the AWS CLI refuses it, rather
/// than falling back silently to other credentials.
pub async fn missing_profile(s: &Settings) -> Option<String> {
    use aws_types::os_shim_internal::{Env, Fs};
    let name = s
        .profile
        .clone()
        .or_else(|| std::env::var("AWS_PROFILE").ok())
        .filter(|p| !p.is_empty())?;
    let files = aws_runtime::env_config::file::EnvConfigFiles::default();
    let found = aws_config::profile::load(&Fs::real(), &Env::real(), &files, None)
        .await
        .ok()
        .is_some_and(|set| set.get_profile(&name).is_some());
    (!found).then_some(name)
}

/// Attempts per call: the SDK's standard mode backs off exponentially with jitter on
/// throttling, 5xx and timeouts; 3 attempts as the AWS CLI's standard mode.
const MAX_ATTEMPTS: u32 = 3;

/// The AWS clients natctl uses, built from one SDK configuration.
#[derive(Debug, Clone)]
pub struct Clients {
    /// EC2.
    pub ec2: aws_sdk_ec2::Client,
    /// IAM.
    pub iam: aws_sdk_iam::Client,
    /// Auto Scaling.
    pub asg: aws_sdk_autoscaling::Client,
    /// Lambda.
    pub lambda: aws_sdk_lambda::Client,
    /// Secrets Manager.
    pub secrets: aws_sdk_secretsmanager::Client,
    /// RDS.
    pub rds: aws_sdk_rds::Client,
    /// CloudWatch Logs.
    pub logs: aws_sdk_cloudwatchlogs::Client,
    /// CloudWatch (alarms, metrics).
    pub cw: aws_sdk_cloudwatch::Client,
    /// CloudTrail.
    pub cloudtrail: aws_sdk_cloudtrail::Client,
    /// GuardDuty.
    pub guardduty: aws_sdk_guardduty::Client,
    /// Service Quotas.
    pub quotas: aws_sdk_servicequotas::Client,
}

impl Clients {
    /// Clients from the standard chain plus `s` (region, profile, endpoint, timeouts).
    pub async fn connect(s: &Settings) -> Self {
        use aws_config::timeout::TimeoutConfig;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(natd::cloud::http_client())
            // "app/natctl" in every request's user agent: CloudTrail shows natctl's calls.
            .app_name(aws_config::AppName::new("natctl").expect("a valid app name"))
            .retry_config(
                aws_config::retry::RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(s.connect_timeout)
                    .read_timeout(s.read_timeout)
                    .operation_attempt_timeout(s.read_timeout)
                    .operation_timeout(s.call_timeout)
                    .build(),
            );
        if let Some(r) = &s.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(p) = &s.profile {
            loader = loader.profile_name(p);
        }
        if let Some(e) = &s.endpoint_url {
            loader = loader.endpoint_url(e);
        }
        Self::new(&loader.load().await)
    }

    /// Clients from a ready SDK configuration.
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self {
            ec2: aws_sdk_ec2::Client::new(sdk),
            iam: aws_sdk_iam::Client::new(sdk),
            asg: aws_sdk_autoscaling::Client::new(sdk),
            lambda: aws_sdk_lambda::Client::new(sdk),
            secrets: aws_sdk_secretsmanager::Client::new(sdk),
            rds: aws_sdk_rds::Client::new(sdk),
            logs: aws_sdk_cloudwatchlogs::Client::new(sdk),
            cw: aws_sdk_cloudwatch::Client::new(sdk),
            cloudtrail: aws_sdk_cloudtrail::Client::new(sdk),
            guardduty: aws_sdk_guardduty::Client::new(sdk),
            quotas: aws_sdk_servicequotas::Client::new(sdk),
        }
    }

    /// The region the clients call.
    pub fn region(&self) -> Option<String> {
        self.ec2.config().region().map(|r| r.to_string())
    }
}
