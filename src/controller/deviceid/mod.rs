pub mod budget;
pub mod inputs;
pub mod plan;
