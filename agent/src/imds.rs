//! Who this instance is, from IMDSv2 (the SDK's IMDS client: session token with a TTL,
//! then metadata reads).

use aws_config::imds::client::Client;
use aws_config::provider_config::ProviderConfig;
use ipnet::Ipv4Net;

/// Errors finding out who we are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configured IMDS endpoint is not a valid URI (permanent).
    #[error("invalid IMDS endpoint {endpoint:?}: {message}")]
    Endpoint {
        /// The configured value.
        endpoint: String,
        /// Why it is invalid.
        message: String,
    },
    /// A metadata read failed (IMDS down, token refused, path missing).
    #[error("IMDS {path}: {message}")]
    Read {
        /// The metadata path.
        path: String,
        /// The client's error.
        message: String,
    },
    /// A value IMDS returned is not what that path should hold.
    #[error("IMDS {path} returned {value:?}: {why}")]
    Value {
        /// The metadata path.
        path: String,
        /// The value.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// The facts natd needs about its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `i-...`
    pub instance_id: String,
    /// e.g. `eu-west-1`.
    pub region: String,
    /// e.g. `eu-west-1a`.
    pub availability_zone: String,
    /// MAC of the primary interface, lower case.
    pub mac: String,
    /// The primary ENI, `eni-...`.
    pub eni_id: String,
    /// The subnet of the primary ENI.
    pub subnet_id: String,
    /// The VPC.
    pub vpc_id: String,
    /// Every IPv4 CIDR block of the VPC.
    pub vpc_cidrs: Vec<Ipv4Net>,
}

/// An IMDSv2 client (the SDK's: it fetches and renews the session token).
#[derive(Debug, Clone)]
pub struct Imds {
    client: Client,
}

const MD: &str = "/latest/meta-data";

impl Imds {
    /// A client for `endpoint`, or for the SDK's default (169.254.169.254, or
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`).
    pub fn new(endpoint: Option<&str>) -> Result<Self, Error> {
        let mut builder = Client::builder().configure(
            &ProviderConfig::without_region().with_http_client(crate::cloud::http_client()),
        );
        if let Some(e) = endpoint {
            builder = builder.endpoint(e).map_err(|err| Error::Endpoint {
                endpoint: e.to_string(),
                message: err.to_string(),
            })?;
        }
        Ok(Self {
            client: builder.build(),
        })
    }

    async fn get(&self, path: String) -> Result<String, Error> {
        self.client
            .get(path.clone())
            .await
            .map(|v| v.as_ref().trim().to_string())
            .map_err(|e| Error::Read {
                path,
                message: aws_smithy_types::error::display::DisplayErrorContext(&e).to_string(),
            })
    }

    /// The VPC's IPv4 CIDR blocks as IMDS lists them for the interface with `mac`: IMDS
    /// follows CIDR blocks associated with or disassociated from the VPC while the
    /// instance runs.
    pub async fn vpc_cidrs(&self, mac: &str) -> Result<Vec<Ipv4Net>, Error> {
        let path = format!("{MD}/network/interfaces/macs/{mac}/vpc-ipv4-cidr-blocks");
        let text = self.get(path.clone()).await?;
        parse_cidrs(&text).ok_or(Error::Value {
            path,
            value: text,
            why: "expected one IPv4 CIDR block per line",
        })
    }

    /// Every private IPv4 address of the interface with `mac`, as IMDS lists them: where
    /// AWS says to confirm that a secondary address moved here by
    /// AssignPrivateIpAddresses has arrived (the remap is asynchronous).
    pub async fn local_ipv4s(&self, mac: &str) -> Result<Vec<std::net::Ipv4Addr>, Error> {
        let path = format!("{MD}/network/interfaces/macs/{mac}/local-ipv4s");
        let text = self.get(path.clone()).await?;
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| l.parse().ok())
            .collect::<Option<Vec<_>>>()
            .ok_or(Error::Value {
                path,
                value: text,
                why: "expected one IPv4 address per line",
            })
    }
}

/// Reads the identity. One attempt of the whole sequence; the caller retries.
pub async fn identity(endpoint: Option<&str>) -> Result<Identity, Error> {
    let imds = Imds::new(endpoint)?;
    let get = |path: String| {
        let imds = imds.clone();
        async move { imds.get(path).await }
    };
    let md = "/latest/meta-data";
    let instance_id = get(format!("{md}/instance-id")).await?;
    let region = get(format!("{md}/placement/region")).await?;
    let availability_zone = get(format!("{md}/placement/availability-zone")).await?;
    let mac = get(format!("{md}/mac")).await?.to_ascii_lowercase();
    let nic = format!("{md}/network/interfaces/macs/{mac}");
    let eni_id = get(format!("{nic}/interface-id")).await?;
    let subnet_id = get(format!("{nic}/subnet-id")).await?;
    let vpc_id = get(format!("{nic}/vpc-id")).await?;
    let cidr_path = format!("{nic}/vpc-ipv4-cidr-blocks");
    let cidr_text = get(cidr_path.clone()).await?;
    let vpc_cidrs = parse_cidrs(&cidr_text).ok_or(Error::Value {
        path: cidr_path,
        value: cidr_text,
        why: "expected one IPv4 CIDR block per line",
    })?;
    for (path, value, prefix) in [
        ("instance-id", &instance_id, "i-"),
        ("interface-id", &eni_id, "eni-"),
        ("vpc-id", &vpc_id, "vpc-"),
    ] {
        if !value.starts_with(prefix) {
            return Err(Error::Value {
                path: path.to_string(),
                value: value.clone(),
                why: "unexpected id format",
            });
        }
    }
    Ok(Identity {
        instance_id,
        region,
        availability_zone,
        mac,
        eni_id,
        subnet_id,
        vpc_id,
        vpc_cidrs,
    })
}

/// Parses IMDS's newline-separated CIDR list; `None` if empty or any line is invalid.
pub fn parse_cidrs(text: &str) -> Option<Vec<Ipv4Net>> {
    let cidrs: Option<Vec<Ipv4Net>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.parse::<Ipv4Net>().ok().map(|n| n.trunc()))
        .collect();
    cidrs.filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_lists() {
        let c = parse_cidrs("10.0.0.0/16\n100.64.0.0/20\n").expect("valid");
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].to_string(), "100.64.0.0/20");
        assert_eq!(
            parse_cidrs("10.0.0.5/16").expect("valid")[0].to_string(),
            "10.0.0.0/16"
        );
        assert_eq!(parse_cidrs(""), None);
        assert_eq!(parse_cidrs("10.0.0.0/16\nfe80::/64"), None);
    }
}
