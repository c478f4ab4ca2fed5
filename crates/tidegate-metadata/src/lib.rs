//! tidegate-metadata
