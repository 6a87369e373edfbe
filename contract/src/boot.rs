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
            pair: true,
            egress_ips: Some(egress_ips),
            require_eip: false,
            cloudwatch_metrics: true,
        }
    }

    /// The rules both sides apply: the stack-name rule, and 1 to [`EGRESS_IPS_MAX`]
    /// egress addresses.
    pub fn validate(&self) -> Result<(), BadBoot> {
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
}
