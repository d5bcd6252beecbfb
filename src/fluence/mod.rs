//! The upstream: a typed client for the Fluence CPU Cloud v3 API and its wire types.

pub mod client;
pub mod error;
pub mod guard;
pub mod timefmt;
pub mod types;

pub use client::{AuthScheme, ClientConfig, FluenceClient};
pub use error::{ClientConfigError, Endpoint, FluenceError};
