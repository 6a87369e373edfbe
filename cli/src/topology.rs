//! Which subnets of a VPC are public and which private, per AZ, decided from facts
//! without I/O. A subnet is public when its route table (its own association, else the
//! VPC's main table) sends 0.0.0.0/0 to an internet gateway; every other subnet is
//! private. Subnets the user names are checked against the VPC and used as given.

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
    /// Explicitly associated route table, if any.
    pub route_table: Option<String>,
}

/// A route table as read from EC2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// `rtb-...`
    pub id: String,
    /// The VPC's main table.
    pub main: bool,
    /// Target of its 0.0.0.0/0 route, if any.
    pub default_target: Option<String>,
}

/// Everything the classification needs about a VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `vpc-...`
    pub vpc_id: String,
    /// Its subnets.
    pub subnets: Vec<Subnet>,
    /// Its route tables.
    pub tables: Vec<Table>,
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
}

/// Why a VPC cannot get NAT egress as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
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

/// The table a subnet routes by: its own association, else the main table.
fn effective_table<'a>(facts: &'a Facts, s: &Subnet) -> Option<&'a Table> {
    match &s.route_table {
        Some(id) => facts.tables.iter().find(|t| &t.id == id),
        None => facts.tables.iter().find(|t| t.main),
    }
}

/// Classifies the VPC's subnets. `private` and `public`, when given, override
/// discovery for those lists. Checks that every AZ with private subnets has a public
/// subnet only when `need_public_per_az` (prod; dev needs one public subnet anywhere).
pub fn classify(
    facts: &Facts,
    private: Option<&[String]>,
    public: Option<&[String]>,
    need_public_per_az: bool,
) -> Result<Topology, Error> {
    for id in private
        .into_iter()
        .flatten()
        .chain(public.into_iter().flatten())
    {
        if !facts.subnets.iter().any(|s| &s.id == id) {
            return Err(Error::ForeignSubnet {
                subnet: id.clone(),
                vpc: facts.vpc_id.clone(),
            });
        }
    }
    if let (Some(pr), Some(pu)) = (private, public)
        && let Some(both) = pr.iter().find(|p| pu.contains(p))
    {
        return Err(Error::BothPublicAndPrivate(both.clone()));
    }
    let routes_to_igw = |s: &Subnet| {
        effective_table(facts, s)
            .and_then(|t| t.default_target.as_deref())
            .is_some_and(|t| t.starts_with("igw-"))
    };
    let mut azs: BTreeMap<String, Az> = BTreeMap::new();
    for s in &facts.subnets {
        let is_public = match (public, private) {
            (Some(pu), _) if pu.contains(&s.id) => true,
            (_, Some(pr)) if pr.contains(&s.id) => false,
            // A subnet not named while the other list was given keeps its discovered role
            // only if it is not contradicted: named lists win.
            (Some(_), Some(_)) => continue,
            _ => routes_to_igw(s),
        };
        let az = azs.entry(s.az.clone()).or_default();
        if is_public {
            az.public.push(s.id.clone());
        } else {
            az.private.push(s.id.clone());
            if let Some(t) = effective_table(facts, s) {
                az.private_tables.insert(t.id.clone());
            }
        }
    }
    if azs.values().all(|a| a.private.is_empty()) {
        return Err(Error::NoPrivateSubnet(facts.vpc_id.clone()));
    }
    for (name, az) in &azs {
        let missing = if need_public_per_az {
            !az.private.is_empty() && az.public.is_empty()
        } else {
            azs.values().all(|a| a.public.is_empty())
        };
        if missing {
            return Err(Error::NoPublicSubnet {
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
    let shared_private_tables = seen
        .into_iter()
        .filter(|(_, a)| a.len() > 1)
        .map(|(t, _)| t.clone())
        .collect();
    Ok(Topology {
        vpc_id: facts.vpc_id.clone(),
        azs,
        shared_private_tables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(id: &str, az: &str, rt: Option<&str>) -> Subnet {
        Subnet {
            id: id.into(),
            az: az.into(),
            cidr: "10.0.0.0/24".into(),
            route_table: rt.map(Into::into),
        }
    }

    fn table(id: &str, main: bool, target: Option<&str>) -> Table {
        Table {
            id: id.into(),
            main,
            default_target: target.map(Into::into),
        }
    }

    fn facts() -> Facts {
        Facts {
            vpc_id: "vpc-1".into(),
            subnets: vec![
                subnet("subnet-pub-a", "a", Some("rtb-pub")),
                subnet("subnet-pub-b", "b", Some("rtb-pub")),
                subnet("subnet-priv-a", "a", None),
                subnet("subnet-priv-b", "b", None),
                subnet("subnet-priv-a2", "a", Some("rtb-priv-a")),
            ],
            tables: vec![
                table("rtb-main", true, None),
                table("rtb-pub", false, Some("igw-1")),
                table("rtb-priv-a", false, Some("nat-0abc")),
            ],
        }
    }

    #[test]
    fn discovers_public_and_private_per_az() {
        let t = classify(&facts(), None, None, true).expect("valid");
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
    }

    #[test]
    fn az_without_public_subnet_is_refused_for_prod_only() {
        let mut f = facts();
        f.subnets.retain(|s| s.id != "subnet-pub-b");
        let e = classify(&f, None, None, true).expect_err("prod needs one per AZ");
        assert_eq!(
            e,
            Error::NoPublicSubnet {
                az: "b".into(),
                private: "subnet-priv-b".into()
            }
        );
        assert!(e.to_string().contains("subnet-priv-b"));
        assert!(
            classify(&f, None, None, false).is_ok(),
            "dev needs one public subnet anywhere"
        );
    }

    #[test]
    fn named_subnets_are_checked_and_win() {
        let f = facts();
        let foreign = ["subnet-elsewhere".to_string()];
        let e = classify(&f, Some(&foreign), None, false).expect_err("foreign");
        assert!(e.to_string().contains("subnet-elsewhere") && e.to_string().contains("vpc-1"));
        let both = ["subnet-priv-a".to_string()];
        assert_eq!(
            classify(&f, Some(&both), Some(&both), false).expect_err("both"),
            Error::BothPublicAndPrivate("subnet-priv-a".into())
        );
        let pr = ["subnet-priv-b".to_string()];
        let pu = ["subnet-pub-a".to_string()];
        let t = classify(&f, Some(&pr), Some(&pu), false).expect("named");
        let privs: Vec<&String> = t.azs.values().flat_map(|a| &a.private).collect();
        assert_eq!(privs, vec!["subnet-priv-b"]);
    }

    #[test]
    fn all_public_vpc_needs_no_nat() {
        let mut f = facts();
        f.tables[0].default_target = Some("igw-1".into());
        f.tables[2].default_target = Some("igw-1".into());
        assert_eq!(
            classify(&f, None, None, false).expect_err("none"),
            Error::NoPrivateSubnet("vpc-1".into())
        );
    }
}
