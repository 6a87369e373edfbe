//! Reads a VPC's subnets and route tables from EC2 for [`crate::topology`].

use crate::topology::{Facts, Subnet, Table};
use aws_sdk_ec2::types::Filter;
use natd::cloud::ApiError;

/// Errors reading the VPC.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The VPC does not exist (in this account and region).
    #[error("VPC {0} not found")]
    NoSuchVpc(String),
    /// An EC2 call failed.
    #[error("{op} {vpc}: {source}")]
    Api {
        /// The call.
        op: &'static str,
        /// The VPC.
        vpc: String,
        /// The service error.
        source: ApiError,
    },
}

/// Reads the facts of `vpc`.
pub async fn vpc(ec2: &aws_sdk_ec2::Client, vpc: &str) -> Result<Facts, Error> {
    let api = |op| {
        move |e: ApiError| Error::Api {
            op,
            vpc: vpc.to_string(),
            source: e,
        }
    };
    let by_vpc = || Filter::builder().name("vpc-id").values(vpc).build();
    let found = ec2
        .describe_vpcs()
        .filters(Filter::builder().name("vpc-id").values(vpc).build())
        .send()
        .await
        .map_err(|e| api("DescribeVpcs")(e.into()))?;
    if found.vpcs().is_empty() {
        return Err(Error::NoSuchVpc(vpc.to_string()));
    }
    let mut tables = Vec::new();
    let mut associations: Vec<(String, String)> = Vec::new();
    let mut pages = ec2
        .describe_route_tables()
        .filters(by_vpc())
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| api("DescribeRouteTables")(e.into()))?;
        for t in page.route_tables() {
            let id = t.route_table_id().unwrap_or_default().to_string();
            let main = t.associations().iter().any(|a| a.main() == Some(true));
            for a in t.associations() {
                if let Some(s) = a.subnet_id() {
                    associations.push((s.to_string(), id.clone()));
                }
            }
            let default_target = natd::aws::default_route(t)
                .and_then(natd::aws::route_target)
                .map(str::to_string);
            tables.push(Table {
                id,
                main,
                default_target,
            });
        }
    }
    let mut subnets = Vec::new();
    let mut pages = ec2
        .describe_subnets()
        .filters(by_vpc())
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| api("DescribeSubnets")(e.into()))?;
        for s in page.subnets() {
            let id = s.subnet_id().unwrap_or_default().to_string();
            let route_table = associations
                .iter()
                .find(|(sub, _)| *sub == id)
                .map(|(_, t)| t.clone());
            subnets.push(Subnet {
                az: s.availability_zone().unwrap_or_default().to_string(),
                cidr: s.cidr_block().unwrap_or_default().to_string(),
                id,
                route_table,
            });
        }
    }
    subnets.sort_by(|a, b| a.id.cmp(&b.id));
    tables.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Facts {
        vpc_id: vpc.to_string(),
        subnets,
        tables,
    })
}
