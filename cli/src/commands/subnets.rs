//! `natctl subnets`: the VPC's public and private subnets per AZ (and the topology reader setup shares).

use super::*;
use crate::aws::Clients;
use crate::cli::{Env, SubnetLists};
use crate::error::Failure;
use crate::{render, topology};

/// The VPC's topology for `env`, or the bad input that prevents it.
pub(super) async fn topology_of(
    ctx: &Ctx,
    c: &Clients,
    vpc: &str,
    need: topology::PublicNeed,
    subnets: &SubnetLists,
) -> Result<topology::Topology, Failure> {
    let facts = topology::read(c, vpc)
        .await
        .map_err(ctx.aws())?
        .ok_or_else(|| Failure::BadInput(format!("VPC {vpc} not found")))?;
    topology::classify(
        &facts,
        subnets.private_subnets.as_deref(),
        subnets.public_subnets.as_deref(),
        need,
    )
    .map_err(|e| Failure::BadInput(e.to_string()))
}

pub(super) async fn subnets_cmd(
    ctx: &Ctx,
    vpc: &str,
    env: Env,
    subnets: &SubnetLists,
) -> Result<(), Failure> {
    let c = ctx.clients().await?;
    let need = match env {
        Env::Dev => topology::PublicNeed::Somewhere,
        Env::Prod => topology::PublicNeed::PerAz,
    };
    let topo = topology_of(ctx, &c, vpc, need, subnets).await?;
    if ctx.json() {
        emit(&render::json(&topo)?)
    } else {
        emit(&render::subnets_text(&topo))
    }
}
