//! Shared test setup.
