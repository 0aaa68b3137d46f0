//! chunker (work in progress).
