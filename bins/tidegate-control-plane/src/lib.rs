//! tidegate-control-plane
