//! Which subnets of a VPC are public and which private, per AZ. [`classify`] decides
//! from [`Facts`] without I/O; [`read`] gathers them. A subnet is public when its route
//! table (by the one rule of [`Associations::table_of`]) sends 0.0.0.0/0 to an internet
//! gateway; every other subnet is private. `--public-subnets` / `--private-subnets`
//! replace discovery for their list: the named subnets and no others.

use crate::aws::read::{self, Associations};
use crate::aws::{Clients, Error};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// A subnet as read from EC2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    /// `subnet-...`
    pub id: String,
    /// Availability zone.
    pub az: String,
    /// IPv4 CIDR.
    pub cidr: String,
}

/// Everything the classification needs about a VPC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `vpc-...`
    pub vpc_id: String,
    /// Its subnets.
    pub subnets: Vec<Subnet>,
    /// Each route table's default route target (`None`: no default route).
    pub defaults: BTreeMap<String, Option<String>>,
    /// Which table each subnet uses.
    pub associations: Associations,
    /// The VPC's IPv4 CIDR blocks.
    pub cidrs: Vec<String>,
}

/// One AZ of the VPC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Az {
    /// Public subnets (where NAT instances and NAT gateways go).
    pub public: Vec<String>,
    /// Private subnets (whose default route goes to NAT).
    pub private: Vec<String>,
    /// Route tables of the private subnets.
    pub private_tables: BTreeSet<String>,
}

/// A chosen subnet, with what the parts' specs need of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubnetInfo {
    /// Availability zone.
    pub az: String,
    /// IPv4 CIDR.
    pub cidr: String,
    /// The table it routes by.
    pub table: String,
    /// Public (else private).
    pub public: bool,
}

/// The VPC's subnets by AZ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// `vpc-...`
    pub vpc_id: String,
    /// By AZ name.
    pub azs: BTreeMap<String, Az>,
    /// Route tables used by private subnets of more than one AZ (prod splits them so
    /// each AZ routes to its own NAT gateway).
    pub shared_private_tables: BTreeSet<String>,
    /// Every public and private subnet above.
    pub subnets: BTreeMap<String, SubnetInfo>,
    /// The VPC's IPv4 CIDR blocks.
    pub vpc_cidrs: Vec<String>,
}

impl Topology {
    /// The private subnets, all AZs.
    pub fn private(&self) -> impl Iterator<Item = &String> {
        self.azs.values().flat_map(|z| &z.private)
    }

    /// The public subnets, all AZs.
    pub fn public(&self) -> impl Iterator<Item = &String> {
        self.azs.values().flat_map(|z| &z.public)
    }
}

/// Why a VPC cannot get NAT egress as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// A named subnet is not in the VPC.
    #[error("subnet {subnet} is not in {vpc}")]
    ForeignSubnet {
        /// The subnet.
        subnet: String,
        /// The VPC.
        vpc: String,
    },
    /// A subnet was named both public and private.
    #[error("subnet {0} is named both public and private")]
    BothPublicAndPrivate(String),
    /// A subnet named private routes to an internet gateway: natd must never take
    /// over its table.
    #[error(
        "subnet {subnet} is public, not private: its route table {table} sends 0.0.0.0/0 to {target} (--private-subnets)"
    )]
    NamedPrivateIsPublic {
        /// The subnet.
        subnet: String,
        /// Its table.
        table: String,
        /// The internet gateway.
        target: String,
    },
    /// A subnet named public has no route to an internet gateway: a NAT there would
    /// reach nothing.
    #[error(
        "subnet {subnet} is not public: its route table {table} does not send 0.0.0.0/0 to an internet gateway (--public-subnets)"
    )]
    NamedPublicIsPrivate {
        /// The subnet.
        subnet: String,
        /// Its table.
        table: String,
    },
    /// The VPC has no private subnet: nothing needs NAT.
    #[error("{0} has no private subnet (every subnet routes 0.0.0.0/0 to an internet gateway)")]
    NoPrivateSubnet(String),
    /// An AZ has private subnets but no public subnet to put NAT in.
    #[error(
        "AZ {az} has private subnet(s) {private} but no public subnet for NAT; add one or name it with --public-subnets"
    )]
    NoPublicSubnet {
        /// The AZ.
        az: String,
        /// Its private subnets, comma-separated.
        private: String,
    },
}

/// Where the egress needs public subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicNeed {
    /// One in every AZ with private subnets (zonal NAT gateways).
    PerAz,
    /// One anywhere (a NAT instance).
    Somewhere,
    /// None (a regional NAT gateway belongs to the VPC, not to a subnet).
    None,
}

/// Classifies the VPC's subnets. `private` and `public`, when given, replace discovery
/// for that list. `need` says where public subnets must exist.
pub fn classify(
    facts: &Facts,
    private: Option<&[String]>,
    public: Option<&[String]>,
    need: PublicNeed,
) -> Result<Topology, Invalid> {
    for id in private
        .into_iter()
        .flatten()
        .chain(public.into_iter().flatten())
    {
        if !facts.subnets.iter().any(|s| &s.id == id) {
            return Err(Invalid::ForeignSubnet {
                subnet: id.clone(),
                vpc: facts.vpc_id.clone(),
            });
        }
    }
    if let (Some(pr), Some(pu)) = (private, public)
        && let Some(both) = pr.iter().find(|p| pu.contains(p))
    {
        return Err(Invalid::BothPublicAndPrivate(both.clone()));
    }
    let table_of = |s: &Subnet| facts.associations.table_of(&s.id).map(str::to_string);
    let routes_to_igw = |s: &Subnet| {
        table_of(s)
            .and_then(|t| facts.defaults.get(&t).cloned().flatten())
            .is_some_and(|t| t.starts_with("igw-"))
    };
    for s in &facts.subnets {
        let table = table_of(s).unwrap_or_default();
        if private.is_some_and(|pr| pr.contains(&s.id)) && routes_to_igw(s) {
            return Err(Invalid::NamedPrivateIsPublic {
                subnet: s.id.clone(),
                target: facts
                    .defaults
                    .get(&table)
                    .cloned()
                    .flatten()
                    .unwrap_or_default(),
                table,
            });
        }
        if public.is_some_and(|pu| pu.contains(&s.id)) && !routes_to_igw(s) {
            return Err(Invalid::NamedPublicIsPrivate {
                subnet: s.id.clone(),
                table,
            });
        }
    }
    let mut azs: BTreeMap<String, Az> = BTreeMap::new();
    let mut subnets = BTreeMap::new();
    for s in &facts.subnets {
        let is_public = match public {
            Some(pu) => pu.contains(&s.id),
            None => routes_to_igw(s) && !private.is_some_and(|pr| pr.contains(&s.id)),
        };
        let is_private = match private {
            Some(pr) => pr.contains(&s.id),
            None => !routes_to_igw(s) && !public.is_some_and(|pu| pu.contains(&s.id)),
        };
        if !is_public && !is_private {
            continue;
        }
        let az = azs.entry(s.az.clone()).or_default();
        let table = table_of(s).unwrap_or_default();
        if is_public {
            az.public.push(s.id.clone());
        } else {
            az.private.push(s.id.clone());
            if !table.is_empty() {
                az.private_tables.insert(table.clone());
            }
        }
        subnets.insert(
            s.id.clone(),
            SubnetInfo {
                az: s.az.clone(),
                cidr: s.cidr.clone(),
                table,
                public: is_public,
            },
        );
    }
    if azs.values().all(|a| a.private.is_empty()) {
        return Err(Invalid::NoPrivateSubnet(facts.vpc_id.clone()));
    }
    for (name, az) in &azs {
        let missing = match need {
            PublicNeed::PerAz => !az.private.is_empty() && az.public.is_empty(),
            PublicNeed::Somewhere => azs.values().all(|a| a.public.is_empty()),
            PublicNeed::None => false,
        };
        if missing {
            return Err(Invalid::NoPublicSubnet {
                az: name.clone(),
                private: az.private.join(","),
            });
        }
    }
    let mut seen: BTreeMap<&String, BTreeSet<&String>> = BTreeMap::new();
    for (name, az) in &azs {
        for t in &az.private_tables {
            seen.entry(t).or_default().insert(name);
        }
    }
    let mut shared_private_tables: BTreeSet<String> = seen
        .into_iter()
        .filter(|(_, a)| a.len() > 1)
        .map(|(t, _)| t.clone())
        .collect();
    // With --private-subnets, a table of a named subnet that also serves a subnet that
    // was not named is shared too: routing it in place would change that subnet's
    // egress, so the named subnets get a table of their own (as for a table shared
    // across AZs).
    if private.is_some() {
        let named_tables: BTreeSet<&String> =
            azs.values().flat_map(|a| &a.private_tables).collect();
        for s in &facts.subnets {
            if subnets.contains_key(&s.id) {
                continue;
            }
            if let Some(t) = table_of(s).filter(|t| named_tables.contains(t)) {
                shared_private_tables.insert(t);
            }
        }
    }
    Ok(Topology {
        vpc_id: facts.vpc_id.clone(),
        azs,
        shared_private_tables,
        subnets,
        vpc_cidrs: facts.cidrs.clone(),
    })
}

/// Reads the facts of `vpc`; `Ok(None)` when there is no such VPC.
pub async fn read(c: &Clients, vpc: &str) -> Result<Option<Facts>, Error> {
    let found = c
        .ec2
        .describe_vpcs()
        .filters(crate::aws::names::filter("vpc-id", &[vpc]))
        .send()
        .await
        .map_err(crate::aws::err("DescribeVpcs", vpc))?;
    let Some(v) = found.vpcs().first() else {
        return Ok(None);
    };
    let cidrs: Vec<String> = v
        .cidr_block_association_set()
        .iter()
        .filter(|a| {
            a.cidr_block_state()
                .and_then(|s| s.state())
                .is_none_or(|s| s.as_str() == "associated")
        })
        .filter_map(|a| a.cidr_block().map(str::to_string))
        .chain(v.cidr_block().map(str::to_string))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let tables = read::vpc_tables(c, vpc).await?;
    let defaults = tables
        .iter()
        .map(|t| {
            (
                t.route_table_id().unwrap_or_default().to_string(),
                read::default_target(t).map(str::to_string),
            )
        })
        .collect();
    let mut subnets: Vec<Subnet> =
        read::subnets(c, vec![crate::aws::names::filter("vpc-id", &[vpc])], vpc)
            .await?
            .iter()
            .map(|s| Subnet {
                id: s.subnet_id().unwrap_or_default().to_string(),
                az: s.availability_zone().unwrap_or_default().to_string(),
                cidr: s.cidr_block().unwrap_or_default().to_string(),
            })
            .collect();
    subnets.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Some(Facts {
        vpc_id: vpc.to_string(),
        subnets,
        defaults,
        associations: Associations::from_tables(&tables),
        cidrs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        let subnet = |id: &str, az: &str| Subnet {
            id: id.into(),
            az: az.into(),
            cidr: "10.0.0.0/24".into(),
        };
        let assoc = |s: &str, t: &str| (s.to_string(), (t.to_string(), format!("a-{s}")));
        Facts {
            vpc_id: "vpc-1".into(),
            subnets: vec![
                subnet("subnet-pub-a", "a"),
                subnet("subnet-pub-b", "b"),
                subnet("subnet-priv-a", "a"),
                subnet("subnet-priv-b", "b"),
                subnet("subnet-priv-a2", "a"),
            ],
            defaults: [
                ("rtb-main".to_string(), None),
                ("rtb-pub".to_string(), Some("igw-1".to_string())),
                ("rtb-priv-a".to_string(), Some("nat-0abc".to_string())),
            ]
            .into(),
            associations: Associations {
                explicit: [
                    assoc("subnet-pub-a", "rtb-pub"),
                    assoc("subnet-pub-b", "rtb-pub"),
                    assoc("subnet-priv-a2", "rtb-priv-a"),
                ]
                .into(),
                main: Some("rtb-main".into()),
            },
            cidrs: vec!["10.0.0.0/16".into()],
        }
    }

    #[test]
    fn discovers_public_and_private_per_az() {
        let t = classify(&facts(), None, None, PublicNeed::PerAz).expect("valid");
        assert_eq!(t.azs["a"].public, vec!["subnet-pub-a"]);
        assert_eq!(t.azs["a"].private, vec!["subnet-priv-a", "subnet-priv-a2"]);
        assert_eq!(t.azs["b"].private, vec!["subnet-priv-b"]);
        assert_eq!(
            t.azs["a"].private_tables,
            ["rtb-main".to_string(), "rtb-priv-a".to_string()].into()
        );
        assert_eq!(
            t.shared_private_tables,
            ["rtb-main".to_string()].into(),
            "main table spans a and b"
        );
        assert_eq!(t.subnets["subnet-priv-a"].table, "rtb-main");
    }

    #[test]
    fn az_without_public_subnet_is_refused_for_prod_only() {
        let mut f = facts();
        f.subnets.retain(|s| s.id != "subnet-pub-b");
        let e = classify(&f, None, None, PublicNeed::PerAz).expect_err("prod needs one per AZ");
        assert_eq!(
            e,
            Invalid::NoPublicSubnet {
                az: "b".into(),
                private: "subnet-priv-b".into()
            }
        );
        assert!(e.to_string().contains("subnet-priv-b"));
        assert!(
            classify(&f, None, None, PublicNeed::Somewhere).is_ok(),
            "dev needs one public subnet anywhere"
        );
        f.subnets.retain(|s| s.id != "subnet-pub-a");
        assert!(classify(&f, None, None, PublicNeed::Somewhere).is_err());
        let t = classify(&f, None, None, PublicNeed::None).expect("regional needs none");
        assert!(t.azs.values().all(|a| a.public.is_empty()));
    }

    #[test]
    fn named_subnets_are_checked_and_replace_discovery() {
        let f = facts();
        let foreign = ["subnet-elsewhere".to_string()];
        let e = classify(&f, Some(&foreign), None, PublicNeed::Somewhere).expect_err("foreign");
        assert!(e.to_string().contains("subnet-elsewhere") && e.to_string().contains("vpc-1"));
        let both = ["subnet-priv-a".to_string()];
        assert_eq!(
            classify(&f, Some(&both), Some(&both), PublicNeed::Somewhere).expect_err("both"),
            Invalid::BothPublicAndPrivate("subnet-priv-a".into())
        );
        let pr = ["subnet-priv-b".to_string()];
        let pu = ["subnet-pub-a".to_string()];
        let t = classify(&f, Some(&pr), Some(&pu), PublicNeed::Somewhere).expect("named");
        let privs: Vec<&String> = t.private().collect();
        assert_eq!(privs, vec!["subnet-priv-b"]);
        // One list named: it replaces discovery for that list only; the other is
        // discovered as before.
        let t = classify(&f, Some(&pr), None, PublicNeed::Somewhere).expect("private named");
        assert_eq!(t.private().collect::<Vec<_>>(), vec!["subnet-priv-b"]);
        assert_eq!(
            t.public().collect::<Vec<_>>(),
            vec!["subnet-pub-a", "subnet-pub-b"]
        );
        let t = classify(&f, None, Some(&pu), PublicNeed::Somewhere).expect("public named");
        assert_eq!(t.public().collect::<Vec<_>>(), vec!["subnet-pub-a"]);
        assert!(
            !t.private().any(|s| s == "subnet-pub-b"),
            "a discovered public subnet does not turn private"
        );
    }

    #[test]
    fn a_table_a_named_subnet_shares_with_an_unnamed_one_is_shared() {
        let f = facts();
        let pr = ["subnet-priv-b".to_string()];
        let t = classify(&f, Some(&pr), None, PublicNeed::PerAz).expect("private named");
        let table = t.subnets["subnet-priv-b"].table.clone();
        let others: Vec<_> = f
            .subnets
            .iter()
            .filter(|s| s.id != "subnet-priv-b")
            .filter(|s| f.associations.table_of(&s.id) == Some(table.as_str()))
            .map(|s| s.id.clone())
            .collect();
        assert!(!others.is_empty(), "the fixture shares {table}");
        assert!(
            t.shared_private_tables.contains(&table),
            "{table} also serves {others:?}, which were not named: it must not be routed in place"
        );
        assert!(
            t.azs.get("a").is_none_or(|a| a.private.is_empty()),
            "AZ a has no named private subnet"
        );
    }

    #[test]
    fn named_subnets_must_be_what_they_are_named() {
        let f = facts();
        let e = classify(
            &f,
            Some(&["subnet-pub-a".to_string()]),
            None,
            PublicNeed::Somewhere,
        )
        .expect_err("a public subnet named private");
        assert!(
            matches!(&e, Invalid::NamedPrivateIsPublic { subnet, target, .. } if subnet == "subnet-pub-a" && target == "igw-1"),
            "{e}"
        );
        let e = classify(
            &f,
            None,
            Some(&["subnet-priv-b".to_string()]),
            PublicNeed::Somewhere,
        )
        .expect_err("a private subnet named public");
        assert!(e.to_string().contains("subnet-priv-b"), "{e}");
    }

    #[test]
    fn all_public_vpc_needs_no_nat() {
        let mut f = facts();
        f.defaults.insert("rtb-main".into(), Some("igw-1".into()));
        f.defaults.insert("rtb-priv-a".into(), Some("igw-1".into()));
        assert_eq!(
            classify(&f, None, None, PublicNeed::Somewhere).expect_err("none"),
            Invalid::NoPrivateSubnet("vpc-1".into())
        );
    }
}
