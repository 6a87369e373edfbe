//! Tag keys and the stack-name rule. natctl tags what it creates; natd finds what it
//! takes over by these tags, and writes its health into one of them.

/// Tag on resources natd takes over (route tables, an Elastic IP). Its value is the
/// stack name, so several stacks can share a VPC without touching each other's tables.
pub const EGRESS_TAG: &str = "natd:egress";

/// Tag natctl puts on everything it creates, value = stack name. natd never deletes
/// anything; natctl's teardown deletes exactly what carries this tag.
pub const STACK_TAG: &str = "natd:stack";

/// Tag `natctl rotate` puts on the holder of a hot standby pair to ask it to hand over
/// to the standby (its value: when it was asked); natd only reads it.
pub const HANDOVER_TAG: &str = "natd:handover";

/// Tag natd writes on its own instance: its health summary, read by `natctl status`
/// (`data=ok control=ok routes=1 at=2026-11-25T10:00:00Z`, see `natd::agent`).
pub const HEALTH_TAG: &str = "natd:health";

/// natd rewrites [`HEALTH_TAG`] when its summary changes and at least this often, so a
/// reader can tell a silent natd (stopped, or cut off from EC2) from a quiet one: a
/// report older than twice this is stale.
pub const HEALTH_TAG_REFRESH_SECS: u64 = 300;

/// Default stack name when the config names none.
pub const DEFAULT_STACK: &str = "default";

/// Longest stack name. Every name derived from a stack must fit AWS's limits; the
/// tightest is an IAM role name (64 characters): `natd-` + stack + the longest suffix
/// natctl derives (`-flow-logs`, 10 characters) leaves 49, and 32 leaves room for
/// suffixes to come. Security group, launch template and Auto Scaling group names
/// (128-255) and tag values (256) are looser.
pub const STACK_MAX_LEN: usize = 32;

/// A stack name that breaks [`check_stack_name`]'s rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "stack name {name:?}: {why} (the rule: 1 to {STACK_MAX_LEN} lowercase letters, digits and '-', not starting or ending with '-')"
)]
pub struct BadStackName {
    /// The name given.
    pub name: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// The stack-name rule both binaries apply: lowercase letters, digits and `-`, at most
/// [`STACK_MAX_LEN`] characters, not starting or ending with `-`. Lowercase only,
/// because IAM names are unique regardless of case: stacks `Dev` and `dev` would share
/// one role.
pub fn check_stack_name(name: &str) -> Result<(), BadStackName> {
    let bad = |why| {
        Err(BadStackName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.chars().count() > STACK_MAX_LEN {
        return bad("it is too long");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return bad("it has a character outside the rule");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("it starts or ends with '-'");
    }
    Ok(())
}

/// Destination natd owns in the tagged route tables.
pub const DEFAULT_ROUTE: &str = "0.0.0.0/0";
/// The IPv6 default route (`setup --ipv6` points it at an egress-only internet gateway).
pub const IPV6_DEFAULT_ROUTE: &str = "::/0";
/// Tag on a private route table whose `::/0` route the stack made (teardown removes
/// that route and nothing else of the table).
pub const IPV6_ROUTE_TAG: &str = "natd:ipv6-route";
/// Tag on a VPC or subnet whose IPv6 CIDR block the stack associated
/// (`--add-ipv6-cidrs`): teardown disassociates it.
pub const IPV6_CIDR_TAG: &str = "natd:ipv6-cidr";

/// The lifecycle transition whose hook natd completes once it forwards.
pub const LAUNCHING_TRANSITION: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";

/// Tag on every route table whose default route a prod stack manages.
pub const ROUTES_TAG: &str = "natd:routes";
/// Tag naming the AZ of a gateway, its address, or a split table.
pub const AZ_TAG: &str = "natd:az";
/// Tag on a split table naming the table its subnets used before.
pub const SPLIT_TAG: &str = "natd:split-from";
/// Role tag: the function the Lambda execution role was made for.
pub const FUNCTION_TAG: &str = "natd:function";
/// Function tag: the role it had before the stack.
pub const PREVIOUS_ROLE_TAG: &str = "natd:previous-role";
/// Function tags: its VPC configuration before the stack, `subnets|groups` or `none`,
/// cut into values of at most [`TAG_VALUE_MAX`] characters under this key, then
/// `natd:previous-vpc-1`, `-2`, ...
pub const PREVIOUS_VPC_TAG: &str = "natd:previous-vpc";
/// Longest tag value Lambda (and EC2) accept.
pub const TAG_VALUE_MAX: usize = 256;
/// Tag on natd's AMI (packer/natd.pkr.hcl puts it on the image it bakes): natctl takes
/// the newest image of the account that carries it when no `--ami` is given.
pub const AMI_TAG: &str = "natd:ami";
/// The `Name` tag.
pub const NAME_TAG: &str = "Name";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_names_follow_one_rule() {
        for good in ["dev", "dev1", "a", "my-app-2", &"a".repeat(STACK_MAX_LEN)] {
            assert_eq!(check_stack_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "dev one",
            "Dev",
            "dev_1",
            "-dev",
            "dev-",
            "d\u{e9}v",
            &"a".repeat(STACK_MAX_LEN + 1),
        ] {
            let e = check_stack_name(bad).expect_err(bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        // The longest role natctl derives still fits IAM's 64 characters.
        let longest = crate::Names(&"a".repeat(STACK_MAX_LEN)).flow_logs();
        assert!(longest.len() <= 64, "{longest}");
    }
}
