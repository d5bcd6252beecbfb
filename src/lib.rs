//! fluence-gateway: a self-hosted gateway in front of the Fluence CPU Cloud API.
//!
//! Teams call the gateway instead of Fluence; it holds the one Fluence key, keeps inventory,
//! spend and prices in SQLite, and runs every deploy through a budget-checked pipeline.

pub mod admin;
pub mod alerts;
pub mod auth;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod domain;
pub mod error;
pub mod failpoint;
pub mod fluence;
pub mod http;
pub mod inventory;
pub mod jobs;
pub mod metrics;
pub mod simulator;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod webhook;

pub use startup::run;
