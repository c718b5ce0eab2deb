//! CacheManager.
pub mod codec;
pub mod l1;
