//! The end-to-end tests, in one binary so that the workspace links one large test executable
//! instead of one per file: each module is one area of the product.

#![allow(clippy::unwrap_used)] // A failed unwrap is a failed test, with its location.

mod common;

mod api;
mod binaries;
mod cli;
mod faults;
mod gateway_link;
mod governance;
mod postgres_tasks;
mod quickstart;
