//! The parts a stack is made of. Each part owns its whole life: its spec (built from
//! the VPC's topology), what it observes, its actions and their pure `plan`, `read`,
//! `apply`, and what it leaves behind (`Existing`) with its pure `plan_remove` and
//! `remove`. A part never imports another part; `crate::stack` composes them.

pub mod alarms;
pub mod flow_logs;
pub mod ipv6;
pub mod lambda;
pub mod nat_gateways;
pub mod nat_instance;

/// Where a part reports what it is doing while it works (one line at a time).
pub type Progress<'a> = &'a mut dyn FnMut(&str);

/// A resource named like one of the stack's that does not carry the stack's tag: it
/// is someone else's, and no part adopts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{kind} {name} exists without the tag {}={stack}: it is not this stack's; rename or remove it, or choose another --name",
    crate::aws::names::STACK_TAG
)]
pub struct Foreign {
    /// Its kind.
    pub kind: &'static str,
    /// Its name or id.
    pub name: String,
    /// The stack.
    pub stack: String,
}

impl Foreign {
    /// The first of the (kind, name) pairs a part's read found, for `stack`.
    pub fn first(found: &[(&'static str, String)], stack: &str) -> Option<Self> {
        found.first().map(|(kind, name)| Foreign {
            kind,
            name: name.clone(),
            stack: stack.to_string(),
        })
    }
}
