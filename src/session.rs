//! Async peer sessions: serve and sync over the rdt driver (stub).
