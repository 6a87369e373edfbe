//! `natctl cost`: dev, the pair, prod and IPv6-only egress priced side by side.

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
    ipv6_share: Option<f64>,
) -> Result<(), Failure> {
    if !gb.is_finite() || gb < 0.0 {
        return Err(Failure::BadInput(format!(
            "--gb-per-month {gb}: must be a non-negative number"
        )));
    }
    if let Some(s) = ipv6_share
        && !(s.is_finite() && (0.0..=100.0).contains(&s))
    {
        return Err(Failure::BadInput(format!(
            "--ipv6-share {s}: must be a percentage between 0 and 100"
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
    let ipv6 = cost::ipv6_only();
    let shared: Option<Vec<cost::Estimate>> = ipv6_share.map(|s| {
        [&dev, &dev_ha, &prod, &regional]
            .iter()
            .map(|e| cost::with_ipv6_share(e, s / 100.0))
            .collect()
    });
    if ctx.json() {
        let mut v = render::cost_json(&dev, &prod, &regional, azs, gb, &p);
        v["dev_ha"] = serde_json::to_value(&dev_ha).unwrap_or_default();
        v["ipv6_only"] = serde_json::to_value(&ipv6).unwrap_or_default();
        if let (Some(s), Some(shared)) = (ipv6_share, &shared) {
            v["ipv6_share"] = serde_json::json!({
                "percent": s,
                "estimates": shared,
            });
        }
        emit(&render::json(&v)?)
    } else {
        let highlight = env.map(|e| match e {
            Env::Dev => "dev",
            Env::Prod => "prod",
        });
        let mut text = render::cost_text(
            &[&dev, &dev_ha, &prod, &regional, &ipv6],
            highlight,
            azs,
            gb,
            &p,
        );
        if let (Some(s), Some(shared)) = (ipv6_share, &shared) {
            text.push_str(&render::ipv6_share_text(
                s,
                &[&dev, &dev_ha, &prod, &regional],
                shared,
            ));
        }
        emit(&text)
    }
}
