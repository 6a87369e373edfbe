//! Every name derived from a stack, built here and nowhere else.

/// The names of a stack's resources.
#[derive(Debug, Clone, Copy)]
pub struct Names<'a>(pub &'a str);

impl Names<'_> {
    /// The NAT instance's security group, role, instance profile, launch template and
    /// Auto Scaling group (a pair's first member's group).
    pub fn nat(&self) -> String {
        format!("natd-{}", self.0)
    }
    /// A hot standby pair's second Auto Scaling group.
    pub fn standby(&self) -> String {
        format!("{}-b", self.nat())
    }
    /// The NAT gateway, its address and split table of `az`.
    pub fn in_az(&self, az: &str) -> String {
        format!("natd-{}-{az}", self.0)
    }
    /// The Lambda execution role, and LambdaSG.
    pub fn lambda(&self) -> String {
        format!("natd-{}-lambda", self.0)
    }
    /// DatabaseSG.
    pub fn database(&self) -> String {
        format!("natd-{}-database", self.0)
    }
    /// SecretsManagerSG and the Secrets Manager endpoint.
    pub fn secrets_manager(&self) -> String {
        format!("natd-{}-secretsmanager", self.0)
    }
    /// One of the stack's CloudWatch alarms ([`crate::metrics::ALARMS`]).
    pub fn alarm(&self, suffix: &str) -> String {
        format!("natd-{}-{suffix}", self.0)
    }
    /// The prefix of every alarm of the stack.
    pub fn alarm_prefix(&self) -> String {
        format!("natd-{}-", self.0)
    }
    /// The flow logs' role and log group.
    pub fn flow_logs(&self) -> String {
        format!("natd-{}-flow-logs", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stacks_names() {
        let n = Names("dev");
        assert_eq!(n.nat(), "natd-dev");
        assert_eq!(n.standby(), "natd-dev-b");
        assert_eq!(n.in_az("eu-west-1a"), "natd-dev-eu-west-1a");
        assert_eq!(n.lambda(), "natd-dev-lambda");
        assert_eq!(n.database(), "natd-dev-database");
        assert_eq!(n.secrets_manager(), "natd-dev-secretsmanager");
        assert_eq!(n.flow_logs(), "natd-dev-flow-logs");
        assert_eq!(n.alarm("failover"), "natd-dev-failover");
    }
}
