//! tidegate-rbac
