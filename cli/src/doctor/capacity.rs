//! The seed's last advice: a function that can open more database connections than
//! its database accepts ("Lambda scales, RDS doesn't"), and a database with no point to
//! restore to.

use super::{Database, Finding, Function, Severity};

/// Memory of an RDS instance class, GiB (the classes of the burstable, general purpose
/// and memory optimized families; others are not estimated).
pub fn class_memory_gib(class: &str) -> Option<f64> {
    let rest = class.strip_prefix("db.")?;
    let (family, size) = rest.split_once('.')?;
    let base = match size {
        "micro" => 1.0,
        "small" => 2.0,
        "medium" => 4.0,
        "large" => 8.0,
        "xlarge" => 16.0,
        s => {
            let n: f64 = s.strip_suffix("xlarge")?.parse().ok()?;
            16.0 * n
        }
    };
    let letter = family.chars().next()?;
    match letter {
        't' | 'm' => Some(base),
        // Memory optimized: twice the memory per vCPU.
        'r' => Some(base * 2.0),
        _ => None,
    }
}

/// The default `max_connections` of `engine` on `class` (RDS's default parameter
/// groups: PostgreSQL LEAST({DBInstanceClassMemory/9531392}, 5000), MySQL and MariaDB
/// {DBInstanceClassMemory/12582880}), with how it was worked out. Aurora and other
/// engines are not estimated.
pub fn default_max_connections(engine: &str, class: &str) -> Option<(u64, String)> {
    let gib = class_memory_gib(class)?;
    let bytes = gib * 1024.0 * 1024.0 * 1024.0;
    match engine {
        "postgres" => {
            let n = ((bytes / 9_531_392.0).floor() as u64).min(5000);
            Some((
                n,
                format!(
                    "PostgreSQL's default LEAST(DBInstanceClassMemory/9531392, 5000) on {class} ({gib} GiB)"
                ),
            ))
        }
        "mysql" | "mariadb" => {
            let n = (bytes / 12_582_880.0).floor() as u64;
            Some((
                n,
                format!("{engine}'s default DBInstanceClassMemory/12582880 on {class} ({gib} GiB)"),
            ))
        }
        _ => None,
    }
}

/// The findings for `func` and the databases it reaches.
pub fn findings(func: &Function, reached: &[&Database]) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some((concurrency, source)) = &func.concurrency else {
        return out;
    };
    for d in reached {
        let Some((max, how)) = &d.max_connections else {
            continue;
        };
        if *concurrency <= *max {
            continue;
        }
        out.push(Finding {
            severity: Severity::Advice,
            check: "function_outscales_database",
            resource: func.name.clone(),
            problem: format!(
                "function {} can run {concurrency} copies at once ({source}), each with its own database connection, but database {} accepts about {max}: Lambda scales, RDS does not, and a burst fails with \"too many connections\"",
                func.name, d.id
            ),
            evidence: vec![
                format!("concurrency {concurrency}: {source}"),
                format!("max_connections about {max}: {how} (unless its parameter group sets another)"),
            ],
            fix: format!(
                "cap the function below the database's connections (aws lambda put-function-concurrency --function-name {} --reserved-concurrent-executions N, N under {max} less what else connects), or put RDS Proxy between them to pool connections",
                func.name
            ),
        });
    }
    out
}

/// The finding for a database whose backups leave no point to restore to.
pub fn restore_findings(d: &Database) -> Option<Finding> {
    if d.backup_days == 0 || d.latest_restorable.is_some() {
        return None;
    }
    Some(Finding {
        severity: Severity::Advice,
        check: "database_not_restorable",
        resource: d.id.clone(),
        problem: format!(
            "database {} keeps automated backups for {} day(s) but has no point it can be restored to: a restore has never been possible, so it has never been tested",
            d.id, d.backup_days
        ),
        evidence: vec![format!(
            "BackupRetentionPeriod={}, LatestRestorableTime: none",
            d.backup_days
        )],
        fix: format!(
            "wait for the first automated backup, then test a restore: aws rds restore-db-instance-to-point-in-time --source-db-instance-identifier {} --target-db-instance-identifier {}-restore-test --use-latest-restorable-time (and delete the copy)",
            d.id, d.id
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_follow_rds_defaults() {
        assert_eq!(class_memory_gib("db.t3.micro"), Some(1.0));
        assert_eq!(class_memory_gib("db.r6g.2xlarge"), Some(64.0));
        assert_eq!(class_memory_gib("db.x2g.large"), None);
        // 1 GiB / 9531392 = 112.
        assert_eq!(
            default_max_connections("postgres", "db.t3.micro").map(|x| x.0),
            Some(112)
        );
        assert_eq!(
            default_max_connections("postgres", "db.r6g.16xlarge").map(|x| x.0),
            Some(5000)
        );
        assert_eq!(
            default_max_connections("mysql", "db.t4g.small").map(|x| x.0),
            Some(170)
        );
        assert_eq!(
            default_max_connections("aurora-postgresql", "db.r6g.large"),
            None
        );
    }

    fn db(max: Option<u64>, backup_days: i32, restorable: bool) -> Database {
        Database {
            id: "db1".into(),
            port: 5432,
            groups: vec![],
            subnets: vec![],
            az: None,
            public: false,
            backup_days,
            multi_az: false,
            max_connections: max.map(|m| (m, "estimate".into())),
            latest_restorable: restorable.then(|| "2026-12-07T10:00:00Z".into()),
        }
    }

    fn func(concurrency: Option<u64>) -> Function {
        Function {
            name: "f".into(),
            subnets: vec![],
            groups: vec![],
            role: "r".into(),
            role_arn: "arn:aws:iam::123456789012:role/r".into(),
            statements: vec![],
            boundary: None,
            concurrency: concurrency.map(|c| (c, "reserved concurrency".to_string())),
            ipv6: false,
        }
    }

    #[test]
    fn a_function_that_outscales_its_database_is_advised_and_one_within_it_not() {
        let d = db(Some(112), 7, true);
        let f = findings(&func(Some(1000)), &[&d]);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Advice);
        assert!(
            f[0].problem.contains("1000") && f[0].problem.contains("112"),
            "{}",
            f[0].problem
        );
        assert!(f[0].fix.contains("RDS Proxy"));
        assert!(findings(&func(Some(50)), &[&d]).is_empty());
        assert!(
            findings(&func(None), &[&d]).is_empty(),
            "concurrency unknown: nothing said"
        );
        assert!(findings(&func(Some(1000)), &[&db(None, 7, true)]).is_empty());
    }

    #[test]
    fn backups_with_nothing_restorable_are_advised() {
        assert!(restore_findings(&db(None, 7, false)).is_some());
        assert!(restore_findings(&db(None, 7, true)).is_none());
        assert!(
            restore_findings(&db(None, 0, false)).is_none(),
            "backups off is its own finding"
        );
    }
}
