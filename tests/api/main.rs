//! The integration tests: one binary, each test with its own server, database and simulator.

mod auth_matrix;
mod bad_input;
mod config;
mod deployments;
mod fixtures;
mod fluence_client;
mod guard;
mod health;
mod helpers;
mod idempotency;
mod inventory;
mod metrics;
mod prices;
mod process;
mod scheduling;
mod simulator;
mod store;
mod teams;
mod upstream;
