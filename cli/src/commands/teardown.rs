//! `natctl teardown`: exactly what the stack created, removed.

use super::*;
use crate::aws;
use crate::error::Failure;
use crate::render;
use crate::stack;

pub(super) async fn teardown(ctx: &Ctx, stack: &str, dry_run: bool) -> Result<(), Failure> {
    let c = ctx.clients().await?;
    let left = stack::read_leftovers(&c, stack).await.map_err(ctx.aws())?;
    let steps = stack::plan_teardown(stack, &left);
    if steps.is_empty() && !dry_run {
        aws::lock::Lock::clear_stale(&c, stack)
            .await
            .map_err(ctx.aws())?;
    }
    if dry_run || steps.is_empty() {
        return show_teardown(ctx, stack, &steps, false, dry_run);
    }
    // Under the lock, from what is there now.
    ctx.locked(&c, stack, async {
        let left = stack::read_leftovers(&c, stack).await.map_err(ctx.aws())?;
        let steps = stack::plan_teardown(stack, &left);
        stack::teardown(&c, &steps, &mut progress)
            .await
            .map_err(ctx.aws())?;
        let still = stack::left_after_teardown(&c, stack, &mut progress)
            .await
            .map_err(ctx.aws())?;
        if !still.is_empty() {
            return Err(Failure::Internal(format!(
                "after removing, these are still there: {}",
                still
                    .iter()
                    .map(|s| render::step(None, s))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        show_teardown(ctx, stack, &steps, !steps.is_empty(), false)
    })
    .await
}

pub(super) fn show_teardown(
    ctx: &Ctx,
    stack: &str,
    steps: &[stack::Step],
    applied: bool,
    dry_run: bool,
) -> Result<(), Failure> {
    if ctx.json() {
        emit(&render::json(&render::teardown_json(
            stack, steps, applied,
        ))?)
    } else {
        emit(&render::teardown_text(stack, steps, dry_run))
    }
}
