//! `natctl cost`: dev, the pair and prod priced side by side.

use super::*;
use crate::cli::Env;
use crate::error::Failure;
use crate::{cost, render};

pub(super) fn cost(
    ctx: &Ctx,
    env: Option<Env>,
    azs: u32,
    gb: f64,
    prices: &[String],
) -> Result<(), Failure> {
    if !gb.is_finite() || gb < 0.0 {
        return Err(Failure::BadInput(format!(
            "--gb-per-month {gb}: must be a non-negative number"
        )));
    }
    let mut p = cost::Prices::default();
    for assignment in prices {
        p.set(assignment).map_err(Failure::BadInput)?;
    }
    let dev = cost::dev(&p, azs, gb);
    let dev_ha = cost::dev_ha(&p, azs, gb, 1);
    let prod = cost::prod(&p, azs, gb);
    let regional = cost::prod_regional(&p, azs, gb);
    if ctx.json() {
        let mut v = render::cost_json(&dev, &prod, &regional, azs, gb, &p);
        v["dev_ha"] = serde_json::to_value(&dev_ha).unwrap_or_default();
        emit(&render::json(&v)?)
    } else {
        let highlight = env.map(|e| match e {
            Env::Dev => "dev",
            Env::Prod => "prod",
        });
        emit(&render::cost_text(
            &[&dev, &dev_ha, &prod, &regional],
            highlight,
            azs,
            gb,
            &p,
        ))
    }
}
