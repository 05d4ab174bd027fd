//! Value types at the bottom of the agent: identifiers, directions and the
//! ring-buffer record view. Every other layer may use them; they use none.

pub mod budget;
pub mod direction;
pub mod record;
pub mod rings;
pub mod values;
