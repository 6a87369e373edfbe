//! Building the AWS SDK configuration (the one place that does).

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use std::time::Duration;

/// Attempts per AWS call. The SDK's standard mode backs off exponentially with full
/// jitter from 1 s, capped at 20 s, on throttling, 5xx and timeouts: 5 attempts wait at
/// most 1 + 2 + 4 + 8 = 15 s before natd's own loop takes over.
const MAX_ATTEMPTS: u32 = 5;
/// One call must not hold a reconcile pass for long.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The HTTP client every AWS and IMDS call uses: hyper 1 with rustls on ring.
pub fn http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// SDK configuration for `region`, with natd's retry and timeout settings. The
/// endpoint comes from `endpoint_url`, else from `AWS_ENDPOINT_URL` (read by the SDK).
pub async fn sdk_config(region: &str, endpoint_url: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .http_client(http_client())
        // "app/natd" in every request's user agent: CloudTrail shows which calls natd made.
        .app_name(aws_config::AppName::new("natd").expect("a valid app name"))
        .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(OPERATION_TIMEOUT)
                .connect_timeout(CONNECT_TIMEOUT)
                .build(),
        );
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// An AWS call that failed, with the service's error code and words: the one
/// conversion both binaries use.
pub use crate::contract::ApiFailure as ApiError;
