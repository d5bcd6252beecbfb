//! Pure domain rules: no I/O, no async, no sqlx, no reqwest.

pub mod admission;
pub mod billing;
pub mod deploy_input;
pub mod deployment;
pub mod ids;
pub mod image;
pub mod money;
pub mod period;
pub mod ports;
pub mod quota;
pub mod team;
