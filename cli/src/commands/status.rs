//! `natctl status`: the stack's egress as it is.

use super::*;
use crate::error::Failure;
use crate::{render, status};

pub(super) async fn status_cmd(ctx: &Ctx, stack: &str) -> Result<(), Failure> {
    let c = ctx.clients().await?;
    let facts = status::read(&c, stack).await.map_err(ctx.aws())?;
    if !facts.exists() {
        return Err(Failure::BadInput(format!(
            "stack {stack} not found: nothing carries its tags (natctl setup --name {stack} builds it)"
        )));
    }
    let st = status::assess(facts);
    if ctx.json() {
        emit(&render::json(&st)?)?;
    } else {
        emit(&render::status_text(&st))?;
    }
    if st.healthy {
        Ok(())
    } else {
        Err(Failure::Broken(format!("stack {stack}: egress is broken")))
    }
}
