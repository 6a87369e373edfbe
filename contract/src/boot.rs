//! The boot configuration: what natctl (or a template) tells natd about its stack, in
//! the instance's user data, and natd reads as the start of its configuration file. One
//! struct, one validation, for the writer and the reader.

use serde::{Deserialize, Serialize};

/// Where natd reads its configuration file.
pub const PATH: &str = "/etc/natd/natd.toml";

/// Most egress addresses a pair SNATs across (natd's bound on `egress_ips`).
pub const EGRESS_IPS_MAX: u32 = 32;

/// What natd must know of its stack at boot; every other key of natd's configuration
/// has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootConfig {
    /// The stack: natd takes over route tables (and Elastic IPs) tagged
    /// `natd:egress=<stack>`.
    pub stack: String,
    /// Route tables natd takes over besides the tagged ones, by id: how a template
    /// (CloudFormation, CDK) that cannot tag tables it does not own hands them over.
    /// natd's policy then names them ([`crate::policy::agent_policy_with_tables`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route_tables: Vec<String>,
    /// A member of a hot standby pair.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pair: bool,
    /// A pair: how many egress addresses (Elastic IPs) it SNATs across.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_ips: Option<u32>,
    /// A single instance whose egress is the stack's Elastic IP: nothing new leaves
    /// before the address is on the instance.
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_eip: bool,
    /// Publish natd's metrics to CloudWatch (namespace [`crate::metrics::NAMESPACE`]);
    /// natctl turns it on.
    #[serde(default, skip_serializing_if = "is_false")]
    pub cloudwatch_metrics: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

/// A route table id as EC2 gives them: `rtb-` and 8 or 17 lowercase hex digits.
pub fn is_route_table_id(id: &str) -> bool {
    id.strip_prefix("rtb-").is_some_and(|h| {
        (h.len() == 8 || h.len() == 17)
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A boot configuration that breaks the rules, naming the key and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value}: {why}")]
pub struct BadBoot {
    /// The key.
    pub key: &'static str,
    /// The value as written.
    pub value: String,
    /// What is wrong with it.
    pub why: String,
}

impl BootConfig {
    /// The configuration of a single NAT instance of `stack`.
    pub fn single(stack: &str, require_eip: bool) -> Self {
        Self {
            stack: stack.to_string(),
            route_tables: Vec::new(),
            pair: false,
            egress_ips: None,
            require_eip,
            cloudwatch_metrics: true,
        }
    }

    /// The configuration of a pair member of `stack`, SNATing across `egress_ips`.
    pub fn pair(stack: &str, egress_ips: u32) -> Self {
        Self {
            stack: stack.to_string(),
            route_tables: Vec::new(),
            pair: true,
            egress_ips: Some(egress_ips),
            require_eip: false,
            cloudwatch_metrics: true,
        }
    }

    /// The same, taking over `tables` by id besides the tagged ones.
    pub fn with_route_tables(mut self, tables: impl IntoIterator<Item = String>) -> Self {
        self.route_tables = tables.into_iter().collect();
        self.route_tables.sort();
        self.route_tables.dedup();
        self
    }

    /// The rules both sides apply: the stack-name rule, route tables by id
    /// (`rtb-` and hex digits), and 1 to [`EGRESS_IPS_MAX`] egress addresses.
    pub fn validate(&self) -> Result<(), BadBoot> {
        if let Some(bad) = self.route_tables.iter().find(|t| !is_route_table_id(t)) {
            return Err(BadBoot {
                key: "route_tables",
                value: format!("{bad:?}"),
                why: "a route table id is rtb- and 8 or 17 hex digits".into(),
            });
        }
        if let Err(e) = crate::check_stack_name(&self.stack) {
            return Err(BadBoot {
                key: "stack",
                value: format!("{:?}", self.stack),
                why: e.why.to_string(),
            });
        }
        if let Some(n) = self.egress_ips
            && !(1..=EGRESS_IPS_MAX).contains(&n)
        {
            return Err(BadBoot {
                key: "egress_ips",
                value: n.to_string(),
                why: format!("must be between 1 and {EGRESS_IPS_MAX} (addresses)"),
            });
        }
        Ok(())
    }

    /// As natd's configuration file (TOML).
    pub fn to_toml(&self) -> String {
        // Serializing a struct of strings, booleans and numbers cannot fail.
        toml::to_string(self).expect("a boot configuration serializes")
    }

    /// The cloud-config that writes it to [`PATH`] at boot (before network-online, so
    /// before natd.service starts): the instance's user data, before base64.
    pub fn cloud_config(&self) -> String {
        format!(
            "#cloud-config\nwrite_files:\n  - path: {PATH}\n    permissions: '0644'\n    content: |\n      {}\n",
            self.to_toml().trim_end().replace('\n', "\n      ")
        )
    }

    /// The boot configuration in user data [`BootConfig::cloud_config`] wrote (what
    /// natctl and a template put in the launch template): how status and doctor learn
    /// the tables a stack names. `None` when the text is not such user data.
    pub fn from_cloud_config(text: &str) -> Option<Self> {
        let (_, rest) = text.split_once(&format!("  - path: {PATH}\n"))?;
        let (_, content) = rest.split_once("    content: |\n")?;
        let toml_text: String = content
            .lines()
            .take_while(|l| l.starts_with("      ") || l.is_empty())
            .map(|l| format!("{}\n", l.strip_prefix("      ").unwrap_or(l)))
            .collect();
        toml::from_str(&toml_text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boot_configuration_reads_back_and_is_checked_naming_the_key() {
        for b in [BootConfig::single("dev", true), BootConfig::pair("ha", 3)] {
            assert_eq!(b.validate(), Ok(()));
            let back: BootConfig = toml::from_str(&b.to_toml()).expect("reads back");
            assert_eq!(back, b);
            assert!(b.cloud_config().contains(PATH));
            assert_eq!(BootConfig::from_cloud_config(&b.cloud_config()), Some(b));
        }
        assert_eq!(
            BootConfig::single("dev", false).to_toml(),
            "stack = \"dev\"\ncloudwatch_metrics = true\n"
        );
        let e = BootConfig::single("Dev", false)
            .validate()
            .expect_err("bad");
        assert_eq!(e.key, "stack");
        assert!(e.to_string().contains("\"Dev\""), "{e}");
        let e = BootConfig::pair("ha", 33).validate().expect_err("bad");
        assert!(e.to_string().starts_with("egress_ips = 33"), "{e}");
    }

    #[test]
    fn route_tables_named_at_boot_read_back_sorted_and_are_checked() {
        let b = BootConfig::single("dev", false).with_route_tables([
            "rtb-0123456789abcdef0".to_string(),
            "rtb-1234abcd".to_string(),
            "rtb-0123456789abcdef0".to_string(),
        ]);
        assert_eq!(b.validate(), Ok(()));
        assert_eq!(b.route_tables, ["rtb-0123456789abcdef0", "rtb-1234abcd"]);
        let back: BootConfig = toml::from_str(&b.to_toml()).expect("reads back");
        assert_eq!(back, b);
        assert_eq!(BootConfig::from_cloud_config(&b.cloud_config()), Some(b));
        assert_eq!(BootConfig::from_cloud_config("#!/bin/sh\necho hi\n"), None);
        for bad in ["rtb-XYZ", "subnet-1234abcd", "rtb-123", ""] {
            let e = BootConfig::single("dev", false)
                .with_route_tables([bad.to_string()])
                .validate()
                .expect_err(bad);
            assert_eq!(e.key, "route_tables");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}
