//! fluence-gateway: a self-hosted gateway in front of the Fluence CPU Cloud API.

pub mod domain;
pub mod fluence;
pub mod simulator;
