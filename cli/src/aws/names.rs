//! The tags natctl gives what it creates (names and keys from `natd_contract`), and
//! the filters that find them again.
//!
//! Tags: `natd:stack=STACK` on everything a stack creates (teardown removes exactly
//! that); `natd:egress=STACK` on the route tables and Elastic IP natd takes over
//! (natd's contract); `natd:routes=STACK` on tables whose default route prod manages;
//! `natd:az` and `natd:split-from` on prod's gateways, addresses and split tables;
//! `natd:function` and `natd:previous-*` for the Lambda wiring.

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
pub use natd_contract::{
    AZ_TAG, EGRESS_TAG, FUNCTION_TAG, NAME_TAG, Names, PREVIOUS_ROLE_TAG, PREVIOUS_VPC_TAG,
    ROUTES_TAG, SPLIT_TAG, STACK_TAG, TAG_VALUE_MAX,
};

/// Tags the user adds with `--tag KEY=VALUE` to everything natctl creates; set once,
/// before anything is created ([`set_extra_tags`]).
static EXTRA_TAGS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// Why a `--tag` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--tag {given:?}: {why}")]
pub struct BadTag {
    /// What was given.
    pub given: String,
    /// What is wrong.
    pub why: &'static str,
}

/// Parses `--tag KEY=VALUE` arguments: AWS's limits (key 1-128, value up to 256
/// characters), no `aws:` prefix (AWS's own), no `natd:` prefix or `Name` (natctl's),
/// no key twice.
pub fn parse_extra_tags(given: &[String]) -> Result<Vec<(String, String)>, BadTag> {
    let mut out: Vec<(String, String)> = Vec::new();
    for g in given {
        let bad = |why| BadTag {
            given: g.clone(),
            why,
        };
        let (k, v) = g.split_once('=').ok_or_else(|| bad("expected KEY=VALUE"))?;
        if k.is_empty() || k.chars().count() > 128 {
            return Err(bad("the key must have 1 to 128 characters"));
        }
        if v.chars().count() > TAG_VALUE_MAX {
            return Err(bad("the value must have at most 256 characters"));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(bad("keys starting with aws: are AWS's"));
        }
        if k.starts_with("natd:") || k == NAME_TAG {
            return Err(bad("natd: keys and Name are natctl's own"));
        }
        if out.iter().any(|(x, _)| x == k) {
            return Err(bad("the key is given twice"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Sets the `--tag` tags (the first call wins; natctl calls it once, at start).
pub fn set_extra_tags(tags: Vec<(String, String)>) {
    let _ = EXTRA_TAGS.set(tags);
}

/// The `--tag` tags.
pub fn extra_tags() -> &'static [(String, String)] {
    EXTRA_TAGS.get().map(Vec::as_slice).unwrap_or(&[])
}

/// The tags of a new EC2 resource: the stack, its name, and `extra`.
pub fn ec2_tags(
    kind: ResourceType,
    stack: &str,
    name: &str,
    extra: &[(&str, &str)],
) -> TagSpecification {
    let mut b = TagSpecification::builder()
        .resource_type(kind)
        .tags(Tag::builder().key(STACK_TAG).value(stack).build())
        .tags(Tag::builder().key(NAME_TAG).value(name).build());
    for (k, v) in extra {
        b = b.tags(Tag::builder().key(*k).value(*v).build());
    }
    for (k, v) in extra_tags() {
        b = b.tags(Tag::builder().key(k).value(v).build());
    }
    b.build()
}

/// The IAM tags of a new role or instance profile: the stack, `extra`, and `--tag`.
pub fn iam_tags(
    op: &'static str,
    target: &str,
    stack: &str,
    extra: &[(&str, &str)],
) -> Result<Vec<aws_sdk_iam::types::Tag>, super::Error> {
    let mut out = vec![iam_tag(op, target, STACK_TAG, stack)?];
    for (k, v) in extra {
        out.push(iam_tag(op, target, k, v)?);
    }
    for (k, v) in extra_tags() {
        out.push(iam_tag(op, target, k, v)?);
    }
    Ok(out)
}

/// An EC2 tag.
pub fn ec2_tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// An IAM tag for the call `op` on `target`.
pub fn iam_tag(
    op: &'static str,
    target: &str,
    key: &str,
    value: &str,
) -> Result<aws_sdk_iam::types::Tag, super::Error> {
    aws_sdk_iam::types::Tag::builder()
        .key(key)
        .value(value)
        .build()
        .map_err(|e| super::Error::Call {
            op,
            target: target.to_string(),
            source: super::ApiFailure::local(e.to_string()),
        })
}

/// The value of EC2 tag `key`, if set.
pub fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Whether EC2 tags carry `natd:stack=stack`. Checked on everything a filter returned:
/// the filter is the API's, the guarantee is ours.
pub fn of_stack(tags: &[Tag], stack: &str) -> bool {
    tag_value(tags, STACK_TAG) == Some(stack)
}

/// Filter on tag `key` = `value`.
pub fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

/// Filter on `natd:stack=stack`.
pub fn stack_filter(stack: &str) -> Filter {
    tag_filter(STACK_TAG, stack)
}

/// Filter `name` = `values`.
pub fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

/// Cuts `value` into tag values of at most [`TAG_VALUE_MAX`] characters, keyed `key`,
/// `key-1`, `key-2`, ... (Lambda refuses longer values).
pub fn split_tag(key: &str, value: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = value.chars().collect();
    let mut out: Vec<(String, String)> = chars
        .chunks(TAG_VALUE_MAX)
        .enumerate()
        .map(|(i, c)| {
            let k = if i == 0 {
                key.to_string()
            } else {
                format!("{key}-{i}")
            };
            (k, c.iter().collect())
        })
        .collect();
    if out.is_empty() {
        out.push((key.to_string(), String::new()));
    }
    out
}

/// Joins what [`split_tag`] cut, from a tag map; `None` when `key` is absent.
pub fn joined_tag(tags: &std::collections::BTreeMap<String, String>, key: &str) -> Option<String> {
    let mut out = tags.get(key)?.clone();
    for i in 1.. {
        match tags.get(&format!("{key}-{i}")) {
            Some(part) => out.push_str(part),
            None => break,
        }
    }
    Some(out)
}

/// The keys [`split_tag`] may have used for `key`, present in `tags`.
pub fn split_tag_keys(tags: &std::collections::BTreeMap<String, String>, key: &str) -> Vec<String> {
    tags.keys()
        .filter(|k| {
            *k == key
                || k.strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_tags_are_checked_naming_the_bad_one() {
        let ok = parse_extra_tags(&["team=payments".into(), "cost-center=42".into()]).expect("ok");
        assert_eq!(ok[0], ("team".to_string(), "payments".to_string()));
        for bad in [
            "noequals",
            "=v",
            "aws:x=1",
            "natd:stack=x",
            "Name=x",
            &format!("k={}", "v".repeat(257)),
        ] {
            let e = parse_extra_tags(&[bad.to_string()]).expect_err(bad);
            assert!(e.to_string().contains(&bad[..bad.len().min(10)]), "{e}");
        }
        assert!(parse_extra_tags(&["a=1".into(), "a=2".into()]).is_err());
    }

    #[test]
    fn long_values_are_split_under_the_limit_and_joined_back() {
        let value = format!(
            "{}|sg-1",
            (0..20)
                .map(|i| format!("subnet-{i:017x}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(value.len() > TAG_VALUE_MAX);
        let parts = split_tag(PREVIOUS_VPC_TAG, &value);
        assert!(parts.len() > 1);
        assert!(
            parts
                .iter()
                .all(|(_, v)| v.chars().count() <= TAG_VALUE_MAX)
        );
        let tags: std::collections::BTreeMap<String, String> = parts.into_iter().collect();
        assert_eq!(
            joined_tag(&tags, PREVIOUS_VPC_TAG).as_deref(),
            Some(value.as_str())
        );
        assert_eq!(split_tag_keys(&tags, PREVIOUS_VPC_TAG).len(), tags.len());
        assert_eq!(
            split_tag("k", "none"),
            vec![("k".to_string(), "none".to_string())]
        );
    }
}
