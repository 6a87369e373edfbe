//! IAM policy statements evaluated the way AWS evaluates them, for the questions doctor
//! asks: may this role call this action on this resource, and what does it allow beyond
//! what a VPC function needs. Pure: no I/O.
//!
//! - `Action`/`NotAction` match case-insensitively with `*` and `?` wildcards;
//!   `Resource`/`NotResource` match case-sensitively with the same wildcards.
//! - An explicit `Deny` wins; then an `Allow` is needed; a permissions boundary, when
//!   the role has one, must allow too.
//! - Conditions on the keys doctor knows of a request (`aws:PrincipalArn`,
//!   `aws:PrincipalAccount`, `aws:SourceVpce`, `aws:SourceVpc`) are evaluated with the
//!   string and ARN operators ([`decide_in`]); a key absent from the request makes a
//!   negated operator (`StringNotEquals`, `ArnNotLike`, ...) hold and any other fail, as
//!   in AWS. Any other condition is not evaluated: an `Allow` with one counts as
//!   allowing, a `Deny` with one is not taken as denying.

use serde_json::Value;

/// `*` and `?` wildcards, as IAM matches them.
pub fn glob(pattern: &str, s: &str, case_insensitive: bool) -> bool {
    let norm = |x: &str| {
        if case_insensitive {
            x.to_ascii_lowercase()
        } else {
            x.to_string()
        }
    };
    let p: Vec<char> = norm(pattern).chars().collect();
    let s: Vec<char> = norm(s).chars().collect();
    // Iterative wildcard match with backtracking on the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while j < s.len() {
        if i < p.len() && (p[i] == '?' || p[i] == s[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(st) = star {
            i = st + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    while i < p.len() && p[i] == '*' {
        i += 1;
    }
    i == p.len()
}

/// A string or a list of strings, as policies write them.
pub fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(x) => vec![x.clone()],
        Value::Array(xs) => xs
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    }
}

/// The statements of a policy document (one object or a list).
pub fn statements(doc: &Value) -> Vec<Value> {
    match &doc["Statement"] {
        Value::Array(xs) => xs.clone(),
        s @ Value::Object(_) => vec![s.clone()],
        _ => vec![],
    }
}

fn matches_action(s: &Value, action: &str) -> bool {
    if s.get("NotAction").is_some() {
        return !strings(&s["NotAction"])
            .iter()
            .any(|p| glob(p, action, true));
    }
    strings(&s["Action"]).iter().any(|p| glob(p, action, true))
}

fn matches_resource(s: &Value, resource: &str) -> bool {
    if s.get("NotResource").is_some() {
        return !strings(&s["NotResource"])
            .iter()
            .any(|p| glob(p, resource, false));
    }
    match s.get("Resource") {
        // Resource policies may leave Resource out: the resource they are on.
        None => true,
        Some(r) => strings(r).iter().any(|p| glob(p, resource, false)),
    }
}

fn effect(s: &Value) -> &str {
    s["Effect"].as_str().unwrap_or("")
}

fn conditional(s: &Value) -> bool {
    s.get("Condition")
        .is_some_and(|c| c.as_object().is_some_and(|o| !o.is_empty()))
}

/// Whether any `Allow` statement names `action` (on any resource).
pub fn mentions(statements: &[Value], action: &str) -> bool {
    statements
        .iter()
        .any(|s| effect(s) == "Allow" && matches_action(s, action))
}

/// How a request is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed (by this statement's `Sid`, or its index).
    Allow(String),
    /// Explicitly denied (by this statement).
    Deny(String),
    /// No statement allows it.
    Implicit,
}

fn sid(s: &Value, i: usize) -> String {
    s["Sid"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("statement {}", i + 1))
}

/// The decision of `statements` (one policy set) on `action` and `resource`, with no
/// request context: conditions are not evaluated.
pub fn decide(statements: &[Value], action: &str, resource: &str) -> Decision {
    decide_in(statements, action, resource, None)
}

/// What doctor knows of a request, for conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The calling role's ARN (`aws:PrincipalArn`).
    pub principal_arn: String,
    /// The endpoint the call goes through (`aws:SourceVpce`), if any.
    pub source_vpce: Option<String>,
    /// The VPC it comes from through that endpoint (`aws:SourceVpc`).
    pub source_vpc: Option<String>,
}

impl Request {
    fn key(&self, key: &str) -> Option<String> {
        match key.to_ascii_lowercase().as_str() {
            "aws:principalarn" => Some(self.principal_arn.clone()),
            "aws:principalaccount" => self.principal_arn.split(':').nth(4).map(str::to_string),
            "aws:sourcevpce" => self.source_vpce.clone(),
            "aws:sourcevpc" => self.source_vpc.clone(),
            _ => None,
        }
    }

    fn knows(key: &str) -> bool {
        matches!(
            key.to_ascii_lowercase().as_str(),
            "aws:principalarn" | "aws:principalaccount" | "aws:sourcevpce" | "aws:sourcevpc"
        )
    }
}

/// Whether the condition block of `s` holds for `req`: `Some(true|false)` when every
/// operator and key in it is one doctor evaluates, `None` otherwise.
fn condition_holds(s: &Value, req: &Request) -> Option<bool> {
    let Some(block) = s.get("Condition").and_then(Value::as_object) else {
        return Some(true);
    };
    let mut all = true;
    for (op, keys) in block {
        let (base, if_exists) = match op.strip_suffix("IfExists") {
            Some(b) => (b, true),
            None => (op.as_str(), false),
        };
        let (negated, like, case_insensitive) = match base {
            "StringEquals" | "ArnEquals" => (false, false, false),
            "StringNotEquals" | "ArnNotEquals" => (true, false, false),
            "StringEqualsIgnoreCase" => (false, false, true),
            "StringNotEqualsIgnoreCase" => (true, false, true),
            "StringLike" | "ArnLike" => (false, true, false),
            "StringNotLike" | "ArnNotLike" => (true, true, false),
            _ => return None,
        };
        for (key, values) in keys.as_object()? {
            if !Request::knows(key) {
                return None;
            }
            let holds = match req.key(key) {
                None => negated || if_exists,
                Some(actual) => {
                    let hit = strings(values).iter().any(|v| {
                        if like {
                            glob(v, &actual, false)
                        } else if case_insensitive {
                            v.eq_ignore_ascii_case(&actual)
                        } else {
                            *v == actual
                        }
                    });
                    hit != negated
                }
            };
            all &= holds;
        }
    }
    Some(all)
}

/// The decision of `statements` on `action` and `resource` for the request `req` when
/// given: conditions doctor can evaluate are; others as described in the module.
pub fn decide_in(
    statements: &[Value],
    action: &str,
    resource: &str,
    req: Option<&Request>,
) -> Decision {
    let holds = |s: &Value| match req {
        Some(r) => condition_holds(s, r),
        None if conditional(s) => None,
        None => Some(true),
    };
    for (i, s) in statements.iter().enumerate() {
        if effect(s) == "Deny"
            && matches_action(s, action)
            && matches_resource(s, resource)
            && holds(s) == Some(true)
        {
            return Decision::Deny(sid(s, i));
        }
    }
    for (i, s) in statements.iter().enumerate() {
        if effect(s) == "Allow"
            && matches_action(s, action)
            && matches_resource(s, resource)
            && holds(s) != Some(false)
        {
            return Decision::Allow(sid(s, i));
        }
    }
    Decision::Implicit
}

/// Actions a VPC function's execution role may hold on `*` without being reported:
/// what AWS's own AWSLambdaVPCAccessExecutionRole, AWSLambdaBasicExecutionRole and
/// AWSXRayDaemonWriteAccess grant there (AWS does not scope them to resources).
pub const ON_ANY_RESOURCE: [&str; 14] = [
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
    "logs:CreateLogGroup",
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "xray:GetSamplingStatisticSummaries",
];

/// Whether `action` is fine on `*`: one of [`ON_ANY_RESOURCE`], or an EC2 read.
fn harmless_on_any(action: &str) -> bool {
    let a = action.to_ascii_lowercase();
    a.starts_with("ec2:describe")
        || (!a.contains(['*', '?']) && ON_ANY_RESOURCE.iter().any(|ok| ok.eq_ignore_ascii_case(&a)))
}

/// Services whose wildcard resources reach other workloads' secrets, keys or
/// identities: any wildcard in their resources is reported.
const SENSITIVE: [&str; 5] = ["secretsmanager", "kms", "ssm", "iam", "sts"];

/// What an execution role allows beyond what a VPC function needs: one sentence per
/// excess, each naming the statement and what to remove. A function's own needs on
/// named resources (a bucket, a table) are not judged: doctor cannot know them.
pub fn excess(statements: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, s) in statements.iter().enumerate() {
        if effect(s) != "Allow" {
            continue;
        }
        let name = sid(s, i);
        if s.get("NotAction").is_some() {
            out.push(format!(
                "{name} allows every action except {} (NotAction): remove it and list the actions the function uses",
                strings(&s["NotAction"]).join(", ")
            ));
            continue;
        }
        let resources = strings(&s["Resource"]);
        let not_resource = s.get("NotResource").is_some();
        let any_resource = not_resource || resources.iter().any(|r| r == "*");
        for a in strings(&s["Action"]) {
            let (service, verb) = a.split_once(':').unwrap_or(("*", a.as_str()));
            if a == "*" || service.contains('*') {
                out.push(format!("{name} allows every action (\"{a}\"): remove it"));
            } else if verb == "*" {
                out.push(format!(
                    "{name} allows every {service} action (\"{a}\"): list only the ones the function calls"
                ));
            } else if any_resource && !harmless_on_any(&a) {
                out.push(format!(
                    "{name} allows {a} on every resource{}: scope it to the function's own resources",
                    if not_resource { " (NotResource)" } else { "" }
                ));
            } else if SENSITIVE.contains(&service.to_ascii_lowercase().as_str()) {
                for r in resources.iter().filter(|r| r.contains(['*', '?'])) {
                    out.push(format!(
                        "{name} allows {a} on {r}, every matching {service} resource: name the function's own"
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wildcards_match_as_iam_matches() {
        for (p, s, ci, want) in [
            (
                "secretsmanager:Get*",
                "secretsmanager:GetSecretValue",
                true,
                true,
            ),
            (
                "SecretsManager:getsecretvalue",
                "secretsmanager:GetSecretValue",
                true,
                true,
            ),
            (
                "secretsmanager:Get*",
                "secretsmanager:PutSecretValue",
                true,
                false,
            ),
            ("*", "anything:AtAll", true, true),
            ("s3:?etObject", "s3:GetObject", true, true),
            (
                "arn:aws:secretsmanager:*:*:secret:app/*",
                "arn:aws:secretsmanager:eu-west-1:1:secret:app/db-AbCd",
                false,
                true,
            ),
            (
                "arn:aws:secretsmanager:*:*:secret:App/*",
                "arn:aws:secretsmanager:eu-west-1:1:secret:app/db-AbCd",
                false,
                false,
            ),
            ("a*b*c", "aXbYbZc", false, true),
            ("a*b", "aXbY", false, false),
        ] {
            assert_eq!(glob(p, s, ci), want, "{p} vs {s}");
        }
    }

    const SECRET: &str = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-AbCd";

    #[test]
    fn decisions_follow_deny_allow_notaction_notresource() {
        let get = "secretsmanager:GetSecretValue";
        let cases: Vec<(Value, Decision)> = vec![
            (
                json!([{"Sid": "Read", "Effect": "Allow", "Action": get, "Resource": SECRET}]),
                Decision::Allow("Read".into()),
            ),
            (
                json!([{"Effect": "Allow", "Action": "secretsmanager:*", "Resource": "arn:aws:secretsmanager:*:*:secret:app/*"}]),
                Decision::Allow("statement 1".into()),
            ),
            (
                json!([{"Effect": "Allow", "Action": get, "Resource": "arn:aws:secretsmanager:*:*:secret:other/*"}]),
                Decision::Implicit,
            ),
            (
                json!([
                    {"Effect": "Allow", "Action": "*", "Resource": "*"},
                    {"Sid": "NoSecrets", "Effect": "Deny", "Action": "secretsmanager:*", "Resource": "*"}
                ]),
                Decision::Deny("NoSecrets".into()),
            ),
            (
                json!([{"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}]),
                Decision::Allow("statement 1".into()),
            ),
            (
                json!([{"Effect": "Allow", "NotAction": "secretsmanager:*", "Resource": "*"}]),
                Decision::Implicit,
            ),
            (
                json!([{"Effect": "Allow", "Action": get, "NotResource": SECRET}]),
                Decision::Implicit,
            ),
            // A conditional deny is not taken as denying.
            (
                json!([
                    {"Effect": "Allow", "Action": get, "Resource": SECRET},
                    {"Effect": "Deny", "Action": get, "Resource": SECRET,
                     "Condition": {"StringNotEquals": {"aws:SourceVpce": "vpce-1"}}}
                ]),
                Decision::Allow("statement 1".into()),
            ),
        ];
        for (i, (doc, want)) in cases.into_iter().enumerate() {
            let st: Vec<Value> = doc.as_array().expect("list").clone();
            assert_eq!(decide(&st, get, SECRET), want, "case {i}");
        }
    }

    #[test]
    fn conditions_on_known_keys_are_evaluated_for_a_request() {
        let get = "secretsmanager:GetSecretValue";
        let role = "arn:aws:iam::123456789012:role/fn";
        let other = "arn:aws:iam::123456789012:role/admin";
        let via = |vpce: Option<&str>, who: &str| Request {
            principal_arn: who.into(),
            source_vpce: vpce.map(str::to_string),
            source_vpc: vpce.map(|_| "vpc-1".to_string()),
        };
        // The secret policy natctl writes: only the function reads, only through vpce-1.
        let only_role: Vec<Value> = json!([
            {"Effect": "Allow", "Action": get, "Resource": "*"},
            {"Sid": "OnlyTheFunction", "Effect": "Deny", "Action": get, "Resource": "*",
             "Condition": {"ArnNotEquals": {"aws:PrincipalArn": [role]}}},
            {"Sid": "ThroughTheEndpoint", "Effect": "Deny", "Action": get, "Resource": "*",
             "Condition": {"StringNotEquals": {"aws:SourceVpce": "vpce-1"}, "ArnEquals": {"aws:PrincipalArn": role}}}
        ])
        .as_array()
        .expect("list")
        .clone();
        for (req, want) in [
            (via(Some("vpce-1"), role), "statement 1"),
            (via(Some("vpce-1"), other), "OnlyTheFunction"),
            // Through NAT there is no aws:SourceVpce: a negated operator holds.
            (via(None, role), "ThroughTheEndpoint"),
            (via(Some("vpce-2"), role), "ThroughTheEndpoint"),
        ] {
            let got = decide_in(&only_role, get, SECRET, Some(&req));
            let name = match &got {
                Decision::Allow(s) | Decision::Deny(s) => s.clone(),
                Decision::Implicit => "implicit".into(),
            };
            assert_eq!(name, want, "{req:?}");
        }
        // An account-scoped endpoint policy; a positive operator on an absent key fails.
        let account: Vec<Value> = json!([
            {"Effect": "Allow", "Principal": "*", "Action": "secretsmanager:*", "Resource": "*",
             "Condition": {"StringEquals": {"aws:PrincipalAccount": "123456789012"}}}
        ])
        .as_array()
        .expect("list")
        .clone();
        assert!(matches!(
            decide_in(&account, get, SECRET, Some(&via(None, role))),
            Decision::Allow(_)
        ));
        assert_eq!(
            decide_in(
                &account,
                get,
                SECRET,
                Some(&via(None, "arn:aws:iam::999999999999:role/x"))
            ),
            Decision::Implicit
        );
        // Unknown keys: an Allow still counts, a Deny does not.
        let unknown: Vec<Value> = json!([
            {"Sid": "A", "Effect": "Allow", "Action": get, "Resource": "*",
             "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}},
            {"Sid": "D", "Effect": "Deny", "Action": get, "Resource": "*",
             "Condition": {"StringEquals": {"aws:RequestedRegion": "us-east-1"}}}
        ])
        .as_array()
        .expect("list")
        .clone();
        assert_eq!(
            decide_in(&unknown, get, SECRET, Some(&via(None, role))),
            Decision::Allow("A".into())
        );
    }

    #[test]
    fn excess_names_what_to_remove_and_spares_what_a_function_needs() {
        // What natctl writes, and AWS's managed VPC access policy: nothing to report.
        let good = json!([
            {"Effect": "Allow", "Action": ["ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces",
              "ec2:DescribeSubnets", "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses",
              "ec2:UnassignPrivateIpAddresses"], "Resource": "*"},
            {"Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"], "Resource": "*"},
            {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": SECRET},
            {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "arn:aws:kms:eu-west-1:123456789012:key/1"},
            {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:s3:::bucket/*"}
        ]);
        assert_eq!(excess(good.as_array().expect("list")), Vec::<String>::new());
        for (doc, needle) in [
            (
                json!({"Effect": "Allow", "Action": "*", "Resource": "*"}),
                "every action",
            ),
            (
                json!({"Effect": "Allow", "Action": "*:*", "Resource": "*"}),
                "every action",
            ),
            (
                json!({"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b"}),
                "every s3 action",
            ),
            (
                json!({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}),
                "NotAction",
            ),
            (
                json!({"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}),
                "on every resource",
            ),
            (
                json!({"Effect": "Allow", "Action": "secretsmanager:Get*", "Resource": "*"}),
                "on every resource",
            ),
            (
                json!({"Effect": "Allow", "Action": "dynamodb:PutItem", "NotResource": "arn:aws:dynamodb:*:*:table/x"}),
                "NotResource",
            ),
            (
                json!({"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                    "Resource": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:*"}),
                "every matching secretsmanager",
            ),
            (
                json!({"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "arn:aws:kms:*:*:key/*"}),
                "every matching kms",
            ),
        ] {
            let found = excess(std::slice::from_ref(&doc));
            assert_eq!(found.len(), 1, "{doc}: {found:?}");
            assert!(found[0].contains(needle), "{doc}: {found:?}");
        }
    }
}
