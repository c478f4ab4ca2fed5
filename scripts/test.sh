#!/usr/bin/env bash
# The whole test suite, from a fresh Debian/Ubuntu machine with a Rust toolchain:
# installs the system packages the tests need, then runs formatting, lints, docs and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s ==\n' "$*"; }

# --- System packages -------------------------------------------------------------------------
# aws-lc-rs builds its C code with a C compiler; nothing else is needed yet.
need=()
command -v cc >/dev/null || need+=(build-essential)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
if ! command -v cargo-nextest >/dev/null; then
  log "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

# --- Static checks ---------------------------------------------------------------------------
log "cargo fmt"
cargo fmt --all -- --check

log "one arrow in the tree"
if cargo tree -d --workspace -e normal 2>/dev/null | grep -E '^arrow(-[a-z]+)? v' ; then
  echo "two versions of the arrow family are in the dependency tree" >&2
  exit 1
fi

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

# --- Tests -----------------------------------------------------------------------------------
log "tests"
# tests/binaries.rs runs the real binaries: build them first.
cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --no-fail-fast
log "doctests"
cargo test --workspace --doc --locked
