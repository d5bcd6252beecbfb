//! simulator tests.
