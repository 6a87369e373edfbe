//! The parts a stack is made of. Each part owns its whole life: its spec (built from
//! the VPC's topology), what it observes, its actions and their pure `plan`, `read`,
//! `apply`, and what it leaves behind (`Existing`) with its pure `plan_remove` and
//! `remove`. A part never imports another part; `crate::stack` composes them.

pub mod lambda;
pub mod nat_gateways;
pub mod nat_instance;

/// Where a part reports what it is doing while it works (one line at a time).
pub type Progress<'a> = &'a mut dyn FnMut(&str);
