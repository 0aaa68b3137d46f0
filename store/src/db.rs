//! db (work in progress).
