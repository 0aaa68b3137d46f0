pub mod ecp;
pub mod identity;
pub mod sync;
