#!/usr/bin/env bash
# The whole test suite, from a fresh Debian/Ubuntu machine with a Rust toolchain:
# installs the system packages the tests need, then runs formatting, lints, docs and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s ==\n' "$*"; }

# --- System packages -------------------------------------------------------------------------
# aws-lc-rs builds its C code with a C compiler; the PostgreSQL tests start throwaway clusters
# with the server binaries (as user `postgres` when run as root); `openssl s_client` probes the
# control plane's TLS as an independent peer; the ODBC source links against
# unixODBC and its tests use the PostgreSQL and SQLite ODBC drivers; pip installs moto, a real
# S3-compatible server; npm installs oidc-provider, a real OpenID provider run by Node.js (20 or
# later).
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v cc >/dev/null || need+=(build-essential)
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
[ -n "$(pg_bin)" ] && [ -x "$(pg_bin)/initdb" ] || need+=(postgresql)
command -v runuser >/dev/null || need+=(util-linux)
command -v openssl >/dev/null || need+=(openssl)
command -v pip3 >/dev/null || need+=(python3-pip)
[ -e /usr/include/sql.h ] && command -v odbcinst >/dev/null || need+=(unixodbc-dev)
odbc_drivers="$(odbcinst -q -d 2>/dev/null || true)"
grep -qi 'postgresql unicode' <<<"$odbc_drivers" || need+=(odbc-postgresql)
grep -qi 'sqlite3' <<<"$odbc_drivers" || need+=(libsqliteodbc)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
if ! python3 -c 'import moto.server' 2>/dev/null; then
  log "installing moto (S3-compatible test server)"
  pip3 install --quiet 'moto[server]>=5.1,<6' 2>/dev/null \
    || pip3 install --quiet --break-system-packages 'moto[server]>=5.1,<6'
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "Node.js $node_major is too old for the OpenID provider the tests run; install 20 or later" >&2
  exit 1
fi
# Installed once here so parallel tests do not race to install it (tidegate-testkit would).
export TIDEGATE_OIDC_PROVIDER_DIR="${TIDEGATE_OIDC_PROVIDER_DIR:-$HOME/.cache/tidegate-testkit/oidc-provider}"
if [ ! -e "$TIDEGATE_OIDC_PROVIDER_DIR/node_modules/oidc-provider/lib/index.js" ]; then
  log "installing oidc-provider (OpenID Connect test provider)"
  # The same pin as crates/tidegate-testkit/src/oidc.rs.
  npm install --no-audit --no-fund --silent --prefix "$TIDEGATE_OIDC_PROVIDER_DIR" oidc-provider@9.13.3
fi
if ! command -v cargo-nextest >/dev/null; then
  log "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

# --- Build settings --------------------------------------------------------------------------
# A CI machine builds once from nothing: incremental compilation would only add gigabytes of
# caches to a disk that may be small.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

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
# tests/integration/binaries.rs runs the real binaries: build them first, together with the
# tests. One invocation resolves the dependencies' features once (dev-dependencies included),
# so nextest then finds everything built instead of compiling dozens of crates a second time.
cargo build --workspace --bins --tests --locked
cargo nextest run --workspace --locked --no-fail-fast
log "doctests"
cargo test --workspace --doc --locked
