//! `natctl rotate`: a pair's instances replaced without losing a connection.

use super::*;
use crate::error::Failure;
use crate::render;

pub(super) async fn rotate_cmd(ctx: &Ctx, stack: &str) -> Result<(), Failure> {
    let c = ctx.clients().await?;
    let outcome = ctx
        .locked(&c, stack, async {
            crate::rotate::rotate(&c, stack, &mut progress)
                .await
                .map_err(|e| match e {
                    crate::rotate::Refused::Api(e) => Failure::aws(e, &ctx.settings),
                    other => Failure::BadInput(other.to_string()),
                })
        })
        .await?;
    if ctx.json() {
        emit(&render::json(&outcome)?)
    } else {
        emit(&format!(
            "Rotated {}: replaced {}; {} holds the routes and the egress address (handover {:.1} s after the request), no connection moved off a live instance.",
            outcome.stack,
            outcome.replaced.join(" and "),
            outcome.holder_after,
            outcome.handover_secs
        ))
    }
}
