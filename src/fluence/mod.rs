//! The upstream: a typed client for the Fluence CPU Cloud v3 API and its wire types.

pub mod timefmt;
pub mod types;
