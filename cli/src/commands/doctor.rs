//! `natctl doctor`: can each VPC function reach its secret, its database, the internet?

use super::*;
use crate::error::Failure;
use crate::{doctor, render};

pub(super) async fn doctor_cmd(
    ctx: &Ctx,
    vpc: &str,
    lambda: Option<&str>,
    strict: bool,
) -> Result<(), Failure> {
    let c = ctx.clients().await?;
    let facts = doctor::read(&c, vpc, lambda).await.map_err(|e| match e {
        doctor::Invalid::Api(e) => Failure::aws(e, &ctx.settings),
        other => Failure::BadInput(other.to_string()),
    })?;
    let d = doctor::diagnose(&facts);
    let functions: Vec<String> = facts.functions.iter().map(|f| f.name.clone()).collect();
    if ctx.json() {
        emit(&render::json(&render::doctor_json(
            vpc, &functions, &d, strict,
        ))?)?;
    } else {
        emit(&render::doctor_text(vpc, functions.len(), &d))?;
    }
    let breaks = d.count(doctor::Severity::Breaks);
    if breaks > 0 {
        Err(Failure::Broken(format!("{breaks} thing(s) break")))
    } else if strict && !d.findings.is_empty() {
        Err(Failure::Broken(format!(
            "{} finding(s) (--strict)",
            d.findings.len()
        )))
    } else {
        Ok(())
    }
}
