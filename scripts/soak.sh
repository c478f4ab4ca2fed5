#!/usr/bin/env bash
# Long runs that do not fit the test command: SIGKILL of a change data capture process at
# random moments, again and again for the given number of seconds (default 600), while a
# mixed workload runs; then the target must equal the source. Needs what scripts/test.sh
# installs (PostgreSQL binaries).
#
#   scripts/soak.sh 1800
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-600}"
case "$seconds" in
  ''|*[!0-9]*) echo "usage: scripts/soak.sh [SECONDS]" >&2; exit 2 ;;
esac
# The test spawns the example it kills.
cargo build -p tidegate-cdc --example cdc_apply
TIDEGATE_SOAK_SECONDS="$seconds" cargo nextest run -p tidegate-cdc \
  --no-capture -E 'test(killed_process_at_random_moments_ends_identical)'
