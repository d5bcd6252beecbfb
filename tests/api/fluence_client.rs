//! fluence_client tests.
