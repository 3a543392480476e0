//! What the `ordermesh` binary runs, as a library so end-to-end tests start exactly the same
//! roles in-process on ephemeral ports.

pub mod cli;
pub mod roles;
pub mod up;
