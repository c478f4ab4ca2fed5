//! tidegate-replicate
