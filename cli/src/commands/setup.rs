//! `natctl setup` and `natctl plan`: input checked, the plan made, applied and read back.

use super::subnets::topology_of;
use super::*;
use crate::aws::{self, Clients};
use crate::cli::{Env, Gateway, SetupArgs};
use crate::error::Failure;
use crate::parts::{lambda, nat_gateways, nat_instance};
use crate::stack::{self, Egress, Request};
use crate::{render, topology};

/// Where a pair's two instances go: the first public subnet (by AZ) for both, or with
/// `spread` the first of the next AZ that has one for the second.
pub(super) fn pair_of(
    topo: &crate::topology::Topology,
    spread: bool,
    egress_ips: Option<u32>,
) -> Result<nat_instance::Pair, Failure> {
    let mut by_az = topo
        .azs
        .iter()
        .filter_map(|(az, z)| z.public.first().map(|s| (az, s)));
    let Some((az_a, a)) = by_az.next() else {
        return Err(Failure::BadInput(format!(
            "VPC {} has no public subnet for the pair",
            topo.vpc_id
        )));
    };
    let b = if spread {
        match by_az.next() {
            Some((_, b)) => b.clone(),
            None => {
                return Err(Failure::BadInput(format!(
                    "--ha-spread needs public subnets in two AZs; VPC {} has them only in {az_a}",
                    topo.vpc_id
                )));
            }
        }
    } else {
        a.clone()
    };
    Ok(nat_instance::Pair {
        subnet_a: a.clone(),
        subnet_b: b,
        spread,
        egress_ips,
        addresses_per_interface: None,
    })
}

/// The request `a` asks for, every name checked and the VPC read (no change made):
/// what setup plans and applies, and what export writes as a template.
pub(crate) async fn request(ctx: &Ctx, c: &Clients, a: &SetupArgs) -> Result<Request, Failure> {
    if a.eip && a.env == Env::Prod {
        return Err(Failure::BadInput(
            "--eip is for --env dev (prod NAT gateways always get one Elastic IP per AZ)".into(),
        ));
    }
    if a.ha && a.env == Env::Prod {
        return Err(Failure::BadInput(
            "--ha is for --env dev (prod NAT gateways are AWS's managed, per-AZ redundancy)".into(),
        ));
    }
    if let (Some(g), Env::Dev) = (a.gateway, a.env) {
        return Err(Failure::BadInput(format!(
            "--gateway {} is for --env prod (dev is one NAT instance)",
            match g {
                Gateway::Zonal => "zonal",
                Gateway::Regional => "regional",
            }
        )));
    }
    aws::names::set_extra_tags(
        aws::names::parse_extra_tags(&a.tags).map_err(|e| Failure::BadInput(e.to_string()))?,
    );
    if a.lambda.is_none() && (a.secret.is_some() || a.db_instance.is_some() || a.db_port.is_some())
    {
        return Err(Failure::BadInput(
            "--secret, --db-instance and --db-port wire a function: name it with --lambda".into(),
        ));
    }
    let flow_wanted = match a.flow_logs.as_deref() {
        None => None,
        Some("off") => Some(None),
        Some(d) => Some(Some(
            crate::parts::flow_logs::parse_destination(d, a.flow_logs_retention)
                .map_err(Failure::BadInput)?,
        )),
    };
    let alarm_topic = match a.alarm_topic.as_deref() {
        None => crate::parts::alarms::Topic::Keep,
        Some(t) => crate::parts::alarms::parse_topic(t).map_err(Failure::BadInput)?,
    };
    if a.alarm_topic.is_some() && a.env == Env::Prod {
        return Err(Failure::BadInput(
            "--alarm-topic is for --env dev (the alarms watch natd's metrics; a NAT gateway's are AWS's)".into(),
        ));
    }
    if a.secret_policy.is_some() && a.secret.is_none() {
        return Err(Failure::BadInput(
            "--secret-policy is a policy on the function's secret: name it with --secret".into(),
        ));
    }
    // Without --gateway, prod keeps the kind of gateway the stack has (zonal for a new
    // one): re-running setup never switches it by omission.
    let regional = match (a.env, a.gateway) {
        (Env::Dev, _) => false,
        (Env::Prod, Some(g)) => g == Gateway::Regional,
        (Env::Prod, None) => nat_gateways::is_regional(c, &a.stack)
            .await
            .map_err(ctx.aws())?,
    };
    let need = match (a.env, regional) {
        (Env::Dev, _) => topology::PublicNeed::Somewhere,
        (Env::Prod, false) => topology::PublicNeed::PerAz,
        (Env::Prod, true) => topology::PublicNeed::None,
    };
    let topo = topology_of(ctx, c, &a.vpc, need, &a.subnets).await?;
    if regional
        && !nat_gateways::has_internet_gateway(c, &a.vpc)
            .await
            .map_err(ctx.aws())?
    {
        return Err(Failure::BadInput(format!(
            "VPC {} has no internet gateway attached: a regional NAT gateway reaches the internet through it (attach one, then run setup again)",
            a.vpc
        )));
    }
    // Every name the user gave is checked before anything changes.
    let lambda = match &a.lambda {
        None => None,
        Some(function) => {
            let r = lambda::resolve(
                c,
                &a.vpc,
                function,
                a.secret.as_deref(),
                a.db_instance.as_deref(),
                a.db_port,
            )
            .await
            .map_err(|e| match e {
                lambda::Invalid::Api(e) => Failure::aws(e, &ctx.settings),
                other => Failure::BadInput(other.to_string()),
            })?;
            let region = r
                .function_arn
                .split(':')
                .nth(3)
                .map(str::to_string)
                .or_else(|| c.region())
                .unwrap_or_default();
            if r.secret_arn.is_some() {
                lambda::check_private_dns(c, &a.vpc)
                    .await
                    .map_err(|e| match e {
                        lambda::Invalid::Api(e) => Failure::aws(e, &ctx.settings),
                        other => Failure::BadInput(other.to_string()),
                    })?;
            }
            let access = match a.endpoint_access {
                crate::cli::EndpointAccess::Lambda => lambda::EndpointAccess::Lambda,
                crate::cli::EndpointAccess::Vpc => lambda::EndpointAccess::Vpc,
            };
            let mut spec = lambda::Spec::new(&a.stack, &topo, &region, function, r, access);
            spec.ipv6 = a.ipv6.then_some(true);
            spec.endpoint_policy = match a.endpoint_policy {
                crate::cli::EndpointPolicy::Stack => lambda::EndpointPolicy::Stack,
                crate::cli::EndpointPolicy::Account => lambda::EndpointPolicy::Account,
                crate::cli::EndpointPolicy::Open => lambda::EndpointPolicy::Open,
            };
            spec.secret_policy = a.secret_policy.map(|p| match p {
                crate::cli::SecretPolicy::Role => lambda::SecretPolicy::Role,
                crate::cli::SecretPolicy::Endpoint => lambda::SecretPolicy::Endpoint,
                crate::cli::SecretPolicy::Off => lambda::SecretPolicy::Off,
            });
            Some(spec)
        }
    };
    let egress = match a.env {
        Env::Dev => {
            let ami = match &a.ami {
                Some(ami) => ami.clone(),
                None => newest_natd_ami(ctx, c).await?,
            };
            let asked = a
                .instance_type
                .clone()
                .unwrap_or_else(|| DEFAULT_INSTANCE_TYPE.to_string());
            nat_instance::validate(c, &ami, &asked)
                .await
                .map_err(|e| match e {
                    nat_instance::Invalid::Api(e) => Failure::aws(e, &ctx.settings),
                    other => Failure::BadInput(other.to_string()),
                })?;
            let mut pair = None;
            let mut instance_type = asked.clone();
            if a.ha {
                let mut p = pair_of(&topo, a.ha_spread, a.egress_ips)?;
                let held = aws::read::stack_addresses(c, &a.stack)
                    .await
                    .map_err(ctx.aws())?
                    .len();
                let egress = p.egress_ips.map_or(held.max(1), |n| n as usize);
                let chosen = crate::limits::type_limits(c, &asked)
                    .await
                    .map_err(ctx.aws())?
                    .ok_or_else(|| {
                        Failure::BadInput(format!(
                            "instance type {asked} does not exist in this region (--instance-type)"
                        ))
                    })?;
                let family = if chosen.ipv4_per_interface >= crate::limits::pair_need(egress) {
                    Vec::new()
                } else {
                    crate::limits::family_limits(c, crate::limits::family(&asked))
                        .await
                        .map_err(ctx.aws())?
                };
                let fits =
                    crate::limits::pair_type(&chosen, &family, egress, a.instance_type.is_some())
                        .map_err(|e| Failure::BadInput(e.to_string()))?;
                if fits.name != asked {
                    nat_instance::validate(c, &ami, &fits.name)
                        .await
                        .map_err(|e| match e {
                            nat_instance::Invalid::Api(e) => Failure::aws(e, &ctx.settings),
                            other => Failure::BadInput(other.to_string()),
                        })?;
                }
                instance_type = fits.name.clone();
                p.addresses_per_interface = Some(fits.ipv4_per_interface);
                pair = Some(p);
            }
            let mut spec = nat_instance::Spec::new(&a.stack, &topo, &ami, &instance_type, a.eip);
            spec.pair = pair;
            Egress::Dev(spec)
        }
        Env::Prod if regional => Egress::Prod(nat_gateways::Spec::regional(&a.stack, &topo)),
        Env::Prod => Egress::Prod(nat_gateways::Spec::new(&a.stack, &topo)),
    };
    let flow_logs = match flow_wanted {
        None => crate::stack::FlowLogs::Leave,
        Some(None) => crate::stack::FlowLogs::Off,
        Some(Some(destination)) => {
            let vpcs = c
                .ec2
                .describe_vpcs()
                .vpc_ids(&a.vpc)
                .send()
                .await
                .map_err(aws::err("DescribeVpcs", &a.vpc))
                .map_err(ctx.aws())?;
            let account = vpcs
                .vpcs()
                .first()
                .and_then(|v| v.owner_id())
                .unwrap_or_default()
                .to_string();
            crate::stack::FlowLogs::On(crate::parts::flow_logs::Spec {
                stack: a.stack.clone(),
                vpc: a.vpc.clone(),
                region: c.region().unwrap_or_default(),
                account,
                destination,
            })
        }
    };
    let alarms = match &egress {
        Egress::Dev(spec) => Some(crate::parts::alarms::Spec {
            stack: a.stack.clone(),
            pair: spec.pair.is_some(),
            topic: alarm_topic,
        }),
        Egress::Prod(_) => None,
    };
    let ipv6 = a.ipv6.then(|| crate::parts::ipv6::Spec {
        stack: a.stack.clone(),
        vpc: a.vpc.clone(),
        private: topo
            .subnets
            .iter()
            .filter(|(_, s)| !s.public)
            .map(|(id, s)| (id.clone(), s.table.clone()))
            .collect(),
        add_cidrs: a.add_ipv6_cidrs,
    });
    Ok(Request {
        stack: a.stack.clone(),
        egress,
        lambda,
        drain_secs: a.drain_seconds,
        flow_logs,
        alarms,
        ipv6,
    })
}

/// setup and plan: validate everything before any change, then plan, render, apply,
/// and read back.
pub(super) async fn setup(ctx: &Ctx, a: &SetupArgs, dry_run: bool) -> Result<(), Failure> {
    let c = ctx.clients().await?;
    let req = request(ctx, &c, a).await?;
    let (_, steps) = plan_now(ctx, &c, &req).await?;
    check_limits(ctx, &c, &req, &steps).await?;
    if steps.is_empty() && !dry_run {
        aws::lock::Lock::clear_stale(&c, &a.stack)
            .await
            .map_err(ctx.aws())?;
    }
    if steps.is_empty() || dry_run {
        if ctx.json() {
            emit(&render::json(&render::setup_json(&req, &steps, false))?)?;
        } else {
            emit(&render::setup_plan(&req, &a.vpc, &steps))?;
        }
        return Ok(());
    }
    // Changes are needed: take the stack's lock and plan again from what is there now
    // (another run may have made some of them meanwhile). A run with nothing to change
    // never takes the lock, so it makes no mutating call at all.
    ctx.locked(&c, &a.stack, plan_and_apply(ctx, &c, a, &req))
        .await
}

/// `natctl export`: the template of the stack `a` asks for, on stdout.
pub(super) async fn export(
    ctx: &Ctx,
    format: crate::cli::ExportFormat,
    a: &SetupArgs,
) -> Result<(), Failure> {
    let c = ctx.clients().await?;
    let req = request(ctx, &c, a).await?;
    let template = match format {
        crate::cli::ExportFormat::Cloudformation => {
            crate::export::cloudformation(&req).map_err(|e| Failure::BadInput(e.to_string()))?
        }
    };
    emit(&render::json(&template)?)
}

/// The instance type of a dev stack when `--instance-type` is not given (a pair's may
/// be larger: the smallest t4g type that holds its egress addresses).
const DEFAULT_INSTANCE_TYPE: &str = "t4g.micro";

/// Refuses a plan that AWS would stop partway at one of its limits (see
/// [`crate::limits`]): the Elastic IPs it allocates, the NAT gateways it adds per AZ,
/// the interface endpoint it adds. Read before any change; nothing is read when the
/// plan adds none of them.
pub(super) async fn check_limits(
    ctx: &Ctx,
    c: &Clients,
    req: &Request,
    steps: &[stack::Step],
) -> Result<(), Failure> {
    use crate::parts::{lambda as lp, nat_gateways as ng, nat_instance as ni};
    use stack::{Build, Step};
    let mut new_addresses = 0;
    let mut gateways_in: Vec<&str> = Vec::new();
    let mut endpoint = false;
    for st in steps {
        match st {
            Step::Build(Build::NatInstance(ni::Action::AllocateAddress))
            | Step::Build(Build::NatGateways(ng::Action::AllocateAddress { .. })) => {
                new_addresses += 1
            }
            Step::Build(Build::NatGateways(ng::Action::CreateNatGateway { az, .. })) => {
                gateways_in.push(az)
            }
            Step::Build(Build::Lambda(lp::Action::CreateEndpoint)) => endpoint = true,
            _ => {}
        }
    }
    let bad = |e: crate::limits::Refusal| Failure::BadInput(e.to_string());
    if new_addresses > 0 {
        let quota = crate::limits::elastic_ip_quota(c)
            .await
            .map_err(ctx.aws())?;
        let held = crate::limits::account_elastic_ips(c)
            .await
            .map_err(ctx.aws())?;
        let region = c.region().unwrap_or_default();
        crate::limits::elastic_ips(&region, quota, held, 0, new_addresses).map_err(bad)?;
    }
    if !gateways_in.is_empty() {
        let quota = crate::limits::vpc_quota(
            c,
            crate::limits::NAT_GATEWAY_QUOTA,
            crate::limits::DEFAULT_NAT_GATEWAYS_PER_AZ,
        )
        .await;
        let live = crate::limits::nat_gateways_by_az(c)
            .await
            .map_err(ctx.aws())?;
        for az in gateways_in {
            crate::limits::nat_gateways_in_az(az, live.get(az).copied().unwrap_or(0), quota)
                .map_err(bad)?;
        }
    }
    if endpoint && let Some(l) = &req.lambda {
        let quota = crate::limits::vpc_quota(
            c,
            crate::limits::INTERFACE_ENDPOINT_QUOTA,
            crate::limits::DEFAULT_INTERFACE_ENDPOINTS,
        )
        .await;
        let live = aws::read::vpc_endpoints(
            c,
            vec![
                aws::names::filter("vpc-id", &[&l.vpc]),
                aws::names::filter("vpc-endpoint-type", &["Interface"]),
            ],
            &l.vpc,
        )
        .await
        .map_err(ctx.aws())?
        .len();
        crate::limits::interface_endpoints(&l.vpc, live, quota).map_err(bad)?;
    }
    Ok(())
}

/// Reads the stack and plans `req`, reporting what the plan found but does not change.
pub(super) async fn plan_now(
    ctx: &Ctx,
    c: &Clients,
    req: &Request,
) -> Result<(stack::Observed, Vec<stack::Step>), Failure> {
    let observed = stack::read(c, req).await.map_err(ctx.aws())?;
    let steps = stack::plan(req, &observed).map_err(|e| Failure::BadInput(e.to_string()))?;
    for w in stack::warnings(&observed) {
        progress(&format!("warning: {w}"));
    }
    Ok((observed, steps))
}

/// setup's plan, and unless `dry_run` its application and read-back.
pub(super) async fn plan_and_apply(
    ctx: &Ctx,
    c: &Clients,
    a: &SetupArgs,
    req: &Request,
) -> Result<(), Failure> {
    let (observed, steps) = plan_now(ctx, c, req).await?;
    if steps.is_empty() {
        if ctx.json() {
            emit(&render::json(&render::setup_json(req, &steps, false))?)?;
        } else {
            emit(&render::setup_plan(req, &a.vpc, &steps))?;
        }
        return Ok(());
    }
    if !ctx.json() {
        emit(&render::setup_plan(req, &a.vpc, &steps))?;
    }
    stack::apply(c, req, &observed, &steps, &mut progress)
        .await
        .map_err(ctx.aws())?;
    let left = stack::left_after_apply(c, req, &mut progress)
        .await
        .map_err(ctx.aws())?;
    if !left.is_empty() {
        return Err(Failure::Internal(format!(
            "after applying, these changes are still needed: {}",
            left.iter()
                .map(|s| render::step(Some(req), s))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    if ctx.json() {
        emit(&render::json(&render::setup_json(req, &steps, true))?)
    } else {
        emit(&format!(
            "Applied {} change(s); stack {} is in place.",
            steps.len(),
            a.stack
        ))
    }
}

/// The newest AMI of this account tagged `natd:ami` (as packer/natd.pkr.hcl tags it).
pub(super) async fn newest_natd_ami(ctx: &Ctx, c: &Clients) -> Result<String, Failure> {
    let images = c
        .ec2
        .describe_images()
        .owners("self")
        .filters(aws::names::filter("tag-key", &[natd_contract::AMI_TAG]))
        .send()
        .await
        .map_err(aws::err("DescribeImages", natd_contract::AMI_TAG))
        .map_err(ctx.aws())?;
    let mut found: Vec<(&str, &str)> = images
        .images()
        .iter()
        .filter_map(|i| Some((i.creation_date()?, i.image_id()?)))
        .collect();
    found.sort();
    found.last().map(|(_, id)| id.to_string()).ok_or_else(|| {
        Failure::BadInput(
            "no AMI tagged natd:ami in this account and region: build one (README, \"The AMI\") or pass --ami".into(),
        )
    })
}
