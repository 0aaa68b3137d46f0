//! The local control socket (stub).
