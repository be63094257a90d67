//! End-to-end tests live in `tests/`; they start the real service binaries (built by
//! `cargo build --workspace --bins`) against a private `redis-server`.
