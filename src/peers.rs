//! Devices seen and trusted (stub).
