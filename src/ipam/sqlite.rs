//! The embedded lease store: SQLite in the state directory.
