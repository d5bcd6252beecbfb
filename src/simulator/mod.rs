//! A faithful, stateful stand-in for the Fluence v3 API (PRODUCT.md section 7).
