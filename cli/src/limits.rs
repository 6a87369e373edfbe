//! The limits AWS enforces that a stack can run into, checked before the first change,
//! so that setup refuses a plan AWS would stop halfway (exit 2, naming the limit and how
//! to get past it) instead of leaving half a stack behind:
//!
//! - IPv4 addresses per network interface, by instance type (EC2 User Guide, "Maximum
//!   IP addresses per network interface"; DescribeInstanceTypes' NetworkInfo). A pair
//!   member's one interface holds its own address and, as holder, every egress
//!   address: the standby receives all N at a takeover, so each member needs 1 + N.
//!   A t4g.nano or t4g.micro holds 2 (one egress address), a t4g.small 4, a
//!   t4g.medium 6, a t4g.large 12.
//! - Elastic IPs per region (VPC User Guide, "Elastic IP address quotas": 5 by default;
//!   the account attribute `vpc-max-elastic-ips` answers the account's quota), counting
//!   what the account already holds.
//! - NAT gateways per Availability Zone (VPC User Guide, "Amazon VPC quotas": 5,
//!   Service Quotas vpc/L-FE5A380F), counting every gateway of the account in that AZ.
//! - Interface VPC endpoints per VPC (PrivateLink quotas: 50, vpc/L-29B6F2EB).
//!
//! Rules per security group (60 inbound, 60 outbound by default) are far above what a
//! stack adds to its own groups; EC2's RulesPerSecurityGroupLimitExceeded names the
//! group if a user's own group is full.
//!
//! The decisions are pure functions of what was read ([`pair_type`],
//! [`elastic_ips`], [`nat_gateways_in_az`], [`interface_endpoints`]); the readers below
//! them make one call each.

use crate::aws::names::filter;
use crate::aws::{Clients, Error, err};

/// Elastic IPs per region when the account attribute cannot be read (AWS's default).
pub const DEFAULT_ELASTIC_IPS: u32 = 5;
/// NAT gateways per AZ when Service Quotas cannot be read (AWS's default).
pub const DEFAULT_NAT_GATEWAYS_PER_AZ: u32 = 5;
/// Interface endpoints per VPC when Service Quotas cannot be read (AWS's default).
pub const DEFAULT_INTERFACE_ENDPOINTS: u32 = 50;
/// Service Quotas code of "EC2-VPC Elastic IPs" (service ec2).
pub const ELASTIC_IP_QUOTA: &str = "L-0263D0A3";
/// Service Quotas code of "NAT gateways per Availability Zone" (service vpc).
pub const NAT_GATEWAY_QUOTA: &str = "L-FE5A380F";
/// Service Quotas code of "Interface VPC endpoints per VPC" (service vpc).
pub const INTERFACE_ENDPOINT_QUOTA: &str = "L-29B6F2EB";

/// What an instance type allows on its network interfaces.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TypeLimits {
    /// The instance type.
    pub name: String,
    /// vCPUs (to order types by size).
    pub vcpus: u32,
    /// Memory in MiB (to order types by size).
    pub memory_mib: u64,
    /// IPv4 addresses per network interface, the primary included.
    pub ipv4_per_interface: u32,
    /// Network interfaces per instance.
    pub interfaces: u32,
}

/// A plan AWS would refuse partway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The pair's instance type cannot hold its egress addresses.
    #[error(
        "{instance_type} allows {limit} IPv4 addresses per network interface, and a pair with {egress} egress address(es) needs {need} on each member (its own and every egress address, which the standby receives at a takeover): {}",
        match fits { Some(t) => format!("use --instance-type {t}, the smallest {} type that holds {need}", family(instance_type)), None => format!("no {} type holds {need}: use fewer --egress-ips", family(instance_type)) }
    )]
    PairType {
        /// The type asked for.
        instance_type: String,
        /// Its IPv4 addresses per interface.
        limit: u32,
        /// Addresses each member needs.
        need: u32,
        /// Egress addresses of the pair.
        egress: usize,
        /// The smallest type of the same family that fits.
        fits: Option<String>,
    },
    /// Not enough Elastic IPs left in the region.
    #[error(
        "the plan needs {new} new Elastic IP(s) in {region}, and the account holds {held} of its quota of {quota} (EC2 account attribute vpc-max-elastic-ips): release Elastic IPs nothing uses, or raise the quota (aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {ELASTIC_IP_QUOTA} --desired-value {}) and run setup again",
        held + new
    )]
    ElasticIps {
        /// The region.
        region: String,
        /// The account's quota.
        quota: u32,
        /// Elastic IPs the account holds in the region.
        held: usize,
        /// Elastic IPs the plan allocates.
        new: usize,
    },
    /// An AZ has as many NAT gateways as its quota allows.
    #[error(
        "{az} already has {live} NAT gateway(s), the account's quota of {quota} per Availability Zone: delete gateways nothing uses, or raise the quota (aws service-quotas request-service-quota-increase --service-code vpc --quota-code {NAT_GATEWAY_QUOTA} --desired-value {}) and run setup again",
        live + 1
    )]
    NatGatewaysInAz {
        /// The AZ.
        az: String,
        /// Gateways there that are not deleted or failed.
        live: usize,
        /// The quota.
        quota: u32,
    },
    /// The VPC has as many interface endpoints as its quota allows.
    #[error(
        "VPC {vpc} already has {live} interface endpoint(s), the quota of {quota} per VPC: the Secrets Manager endpoint cannot be added; delete endpoints nothing uses, or raise the quota (aws service-quotas request-service-quota-increase --service-code vpc --quota-code {INTERFACE_ENDPOINT_QUOTA} --desired-value {}) and run setup again",
        live + 1
    )]
    InterfaceEndpoints {
        /// The VPC.
        vpc: String,
        /// Its interface endpoints that are not being deleted.
        live: usize,
        /// The quota.
        quota: u32,
    },
}

/// The family of an instance type: `t4g` of `t4g.micro`.
pub fn family(instance_type: &str) -> &str {
    instance_type.split('.').next().unwrap_or(instance_type)
}

/// IPv4 addresses each member of a pair with `egress` egress addresses needs on its
/// interface: its own primary address and every egress address.
pub fn pair_need(egress: usize) -> u32 {
    1 + u32::try_from(egress).unwrap_or(u32::MAX - 1)
}

/// The smallest of `types` (by vCPUs, then memory) that holds `need` addresses per
/// interface.
pub fn smallest_fitting(types: &[TypeLimits], need: u32) -> Option<&TypeLimits> {
    types
        .iter()
        .filter(|t| t.ipv4_per_interface >= need)
        .min_by_key(|t| (t.vcpus, t.memory_mib, t.name.clone()))
}

/// The instance type a pair with `egress` addresses runs on: `chosen` when it holds
/// them; else, when the user did not name a type (`explicit` false), the smallest of
/// its family that does; else a refusal naming the type, its limit and what fits.
pub fn pair_type(
    chosen: &TypeLimits,
    family_types: &[TypeLimits],
    egress: usize,
    explicit: bool,
) -> Result<TypeLimits, Refusal> {
    let need = pair_need(egress);
    if chosen.ipv4_per_interface >= need {
        return Ok(chosen.clone());
    }
    let fits = smallest_fitting(family_types, need);
    match fits {
        Some(t) if !explicit => Ok(t.clone()),
        _ => Err(Refusal::PairType {
            instance_type: chosen.name.clone(),
            limit: chosen.ipv4_per_interface,
            need,
            egress,
            fits: fits.map(|t| t.name.clone()),
        }),
    }
}

/// Whether the plan's Elastic IPs fit the region's quota: the part wants `want`, holds
/// `reused` of them already, and the account holds `held` in all.
pub fn elastic_ips(
    region: &str,
    quota: u32,
    held: usize,
    reused: usize,
    want: usize,
) -> Result<(), Refusal> {
    let new = want.saturating_sub(reused);
    if new > 0 && held + new > quota as usize {
        return Err(Refusal::ElasticIps {
            region: region.to_string(),
            quota,
            held,
            new,
        });
    }
    Ok(())
}

/// Whether one more NAT gateway fits `az`, which has `live` of them.
pub fn nat_gateways_in_az(az: &str, live: usize, quota: u32) -> Result<(), Refusal> {
    if live >= quota as usize {
        return Err(Refusal::NatGatewaysInAz {
            az: az.to_string(),
            live,
            quota,
        });
    }
    Ok(())
}

/// Whether one more interface endpoint fits `vpc`, which has `live` of them.
pub fn interface_endpoints(vpc: &str, live: usize, quota: u32) -> Result<(), Refusal> {
    if live >= quota as usize {
        return Err(Refusal::InterfaceEndpoints {
            vpc: vpc.to_string(),
            live,
            quota,
        });
    }
    Ok(())
}

fn limits_of(t: &aws_sdk_ec2::types::InstanceTypeInfo) -> Option<TypeLimits> {
    let net = t.network_info()?;
    Some(TypeLimits {
        name: t.instance_type()?.as_str().to_string(),
        vcpus: t
            .v_cpu_info()
            .and_then(|v| v.default_v_cpus())
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
        memory_mib: t
            .memory_info()
            .and_then(|m| m.size_in_mib())
            .and_then(|m| u64::try_from(m).ok())
            .unwrap_or(0),
        ipv4_per_interface: net
            .ipv4_addresses_per_interface()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
        interfaces: net
            .maximum_network_interfaces()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
    })
}

/// What `instance_type` allows; `None` when the region has no such type.
pub async fn type_limits(c: &Clients, instance_type: &str) -> Result<Option<TypeLimits>, Error> {
    let r = c
        .ec2
        .describe_instance_types()
        .instance_types(aws_sdk_ec2::types::InstanceType::from(instance_type))
        .send()
        .await
        .map_err(err("DescribeInstanceTypes", instance_type))?;
    Ok(r.instance_types().iter().find_map(limits_of))
}

/// What every type of `family` allows (one paginated DescribeInstanceTypes).
pub async fn family_limits(c: &Clients, family: &str) -> Result<Vec<TypeLimits>, Error> {
    let pattern = format!("{family}.*");
    let types = c
        .ec2
        .describe_instance_types()
        .filters(filter("instance-type", &[&pattern]))
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(err("DescribeInstanceTypes", &pattern))?;
    Ok(types
        .iter()
        .filter_map(limits_of)
        .filter(|t| self::family(&t.name) == family)
        .collect())
}

/// The region's Elastic IP quota (the account attribute `vpc-max-elastic-ips`).
pub async fn elastic_ip_quota(c: &Clients) -> Result<u32, Error> {
    let r = c
        .ec2
        .describe_account_attributes()
        .attribute_names(aws_sdk_ec2::types::AccountAttributeName::from(
            "vpc-max-elastic-ips",
        ))
        .send()
        .await
        .map_err(err("DescribeAccountAttributes", "vpc-max-elastic-ips"))?;
    Ok(r.account_attributes()
        .iter()
        .filter(|a| a.attribute_name() == Some("vpc-max-elastic-ips"))
        .flat_map(|a| a.attribute_values())
        .find_map(|v| v.attribute_value().and_then(|v| v.parse().ok()))
        .unwrap_or(DEFAULT_ELASTIC_IPS))
}

/// Elastic IPs the account holds in the region (DescribeAddresses answers all at once).
pub async fn account_elastic_ips(c: &Clients) -> Result<usize, Error> {
    let r = c
        .ec2
        .describe_addresses()
        .send()
        .await
        .map_err(err("DescribeAddresses", "the region"))?;
    Ok(r.addresses().len())
}

/// A VPC quota's applied value, else AWS's default, else `fallback` (Service Quotas may
/// be unreadable: no permission, or a partition without it).
pub async fn vpc_quota(c: &Clients, code: &str, fallback: u32) -> u32 {
    let applied = c
        .quotas
        .get_service_quota()
        .service_code("vpc")
        .quota_code(code)
        .send()
        .await
        .ok()
        .and_then(|q| q.quota().and_then(|q| q.value()));
    let value = match applied {
        Some(v) => Some(v),
        None => c
            .quotas
            .get_aws_default_service_quota()
            .service_code("vpc")
            .quota_code(code)
            .send()
            .await
            .ok()
            .and_then(|q| q.quota().and_then(|q| q.value())),
    };
    value
        .filter(|v| *v >= 1.0)
        .map_or(fallback, |v| v.min(f64::from(u32::MAX)) as u32)
}

/// NAT gateways of the account in each AZ that are not deleted or failed (a regional
/// gateway counts in none).
pub async fn nat_gateways_by_az(
    c: &Clients,
) -> Result<std::collections::BTreeMap<String, usize>, Error> {
    let gateways = c
        .ec2
        .describe_nat_gateways()
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(err("DescribeNatGateways", "the region"))?;
    let subnets: Vec<String> = gateways
        .iter()
        .filter(|g| {
            g.state()
                .is_none_or(|s| !matches!(s.as_str(), "deleted" | "deleting" | "failed"))
        })
        .filter_map(|g| g.subnet_id().map(str::to_string))
        .collect();
    let mut by_az = std::collections::BTreeMap::new();
    if subnets.is_empty() {
        return Ok(by_az);
    }
    let unique: std::collections::BTreeSet<&String> = subnets.iter().collect();
    let found = c
        .ec2
        .describe_subnets()
        .set_subnet_ids(Some(unique.into_iter().cloned().collect()))
        .send()
        .await
        .map_err(err("DescribeSubnets", "NAT gateways' subnets"))?;
    let az_of: std::collections::BTreeMap<&str, &str> = found
        .subnets()
        .iter()
        .filter_map(|s| Some((s.subnet_id()?, s.availability_zone()?)))
        .collect();
    for s in &subnets {
        if let Some(az) = az_of.get(s.as_str()) {
            *by_az.entry((*az).to_string()).or_insert(0) += 1;
        }
    }
    Ok(by_az)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, vcpus: u32, mem: u64, ipv4: u32) -> TypeLimits {
        TypeLimits {
            name: name.into(),
            vcpus,
            memory_mib: mem,
            ipv4_per_interface: ipv4,
            interfaces: 3,
        }
    }

    fn t4g() -> Vec<TypeLimits> {
        vec![
            t("t4g.large", 2, 8192, 12),
            t("t4g.micro", 2, 1024, 2),
            t("t4g.nano", 2, 512, 2),
            t("t4g.small", 2, 2048, 4),
            t("t4g.medium", 2, 4096, 6),
        ]
    }

    #[test]
    fn a_pair_needs_its_own_address_and_every_egress_address() {
        let family = t4g();
        let micro = &family[1];
        assert_eq!(
            pair_type(micro, &family, 1, true).map(|t| t.name),
            Ok("t4g.micro".into())
        );
        // Not named: the smallest type that holds them.
        assert_eq!(
            pair_type(micro, &family, 2, false).map(|t| t.name),
            Ok("t4g.small".into())
        );
        assert_eq!(
            pair_type(micro, &family, 5, false).map(|t| t.name),
            Ok("t4g.medium".into())
        );
        assert_eq!(
            pair_type(micro, &family, 8, false).map(|t| t.name),
            Ok("t4g.large".into())
        );
        // Named: refused, naming the type, its limit and what fits.
        let e = pair_type(micro, &family, 2, true).expect_err("t4g.micro holds 2");
        assert_eq!(
            e,
            Refusal::PairType {
                instance_type: "t4g.micro".into(),
                limit: 2,
                need: 3,
                egress: 2,
                fits: Some("t4g.small".into())
            }
        );
        let msg = e.to_string();
        for part in [
            "t4g.micro",
            "allows 2",
            "needs 3",
            "--instance-type t4g.small",
        ] {
            assert!(msg.contains(part), "{part} in {msg}");
        }
        // Nothing of the family fits.
        let e = pair_type(micro, &family, 20, false).expect_err("none holds 21");
        assert!(e.to_string().contains("no t4g type holds 21"), "{e}");
    }

    #[test]
    fn elastic_ips_count_what_the_account_holds_and_what_the_stack_reuses() {
        assert!(elastic_ips("eu-west-1", 5, 3, 0, 2).is_ok());
        let e = elastic_ips("eu-west-1", 5, 4, 0, 2).expect_err("4 + 2 > 5");
        assert_eq!(
            e,
            Refusal::ElasticIps {
                region: "eu-west-1".into(),
                quota: 5,
                held: 4,
                new: 2
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("quota of 5")
                && msg.contains(ELASTIC_IP_QUOTA)
                && msg.contains("--desired-value 6")
        );
        // A re-run of a stack that holds its addresses needs none.
        assert!(elastic_ips("eu-west-1", 5, 5, 2, 2).is_ok());
        // One more for a stack that holds one of two.
        assert!(elastic_ips("eu-west-1", 5, 5, 1, 2).is_err());
        assert!(elastic_ips("eu-west-1", 5, 4, 1, 2).is_ok());
    }

    #[test]
    fn nat_gateways_and_endpoints_stop_at_their_quota() {
        assert!(nat_gateways_in_az("eu-west-1a", 4, 5).is_ok());
        let e = nat_gateways_in_az("eu-west-1a", 5, 5).expect_err("full");
        assert!(e.to_string().contains("eu-west-1a") && e.to_string().contains(NAT_GATEWAY_QUOTA));
        assert!(interface_endpoints("vpc-1", 49, 50).is_ok());
        let e = interface_endpoints("vpc-1", 50, 50).expect_err("full");
        assert!(
            e.to_string().contains("vpc-1") && e.to_string().contains(INTERFACE_ENDPOINT_QUOTA)
        );
    }

    #[test]
    fn the_smallest_type_is_by_size_not_by_name() {
        let types = t4g();
        assert_eq!(
            smallest_fitting(&types, 2).map(|t| t.name.as_str()),
            Some("t4g.nano")
        );
        assert_eq!(family("t4g.micro"), "t4g");
    }
}
