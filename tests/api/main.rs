//! The integration tests: one binary, each test with its own server, database and simulator.

mod config;
mod fixtures;
mod fluence_client;
mod health;
mod helpers;
mod process;
mod simulator;
mod store;
mod upstream;
