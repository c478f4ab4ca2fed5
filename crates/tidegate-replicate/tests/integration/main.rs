//! The integration tests of `tidegate-replicate`, in one binary so that the workspace links one
//! test executable per crate instead of one per file.

#![allow(clippy::unwrap_used)] // A failed unwrap is a failed test, with its location.

mod common;

mod copy;
mod encryption;
mod odbc;
mod postgres;
mod s3;
