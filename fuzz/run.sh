#!/usr/bin/env bash
# Runs every fuzz target for the given number of seconds (default 60), one after the other, on
# the committed corpus. Works on stable through RUSTC_BOOTSTRAP; uses nightly if `cargo +nightly`
# is available and FUZZ_TOOLCHAIN=nightly. Crashes land in fuzz/artifacts/<target>/.
#
# The sanitizer is off by default (FUZZ_SANITIZER=address turns AddressSanitizer on): every
# crate under test forbids unsafe code, so the fuzzers look for panics and broken properties,
# and an uninstrumented build runs several times faster.
#
#   fuzz/run.sh 30
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
targets=(frame_decode sealed_open jwt_verify pg_copy_decode secret_open pgoutput_decode)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
  exit 1
fi

if [ "${FUZZ_TOOLCHAIN:-}" = nightly ]; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

status=0
for target in "${targets[@]}"; do
  printf '\n== %s for %s s ==\n' "$target" "$seconds"
  # Fuzz into a scratch copy so the committed seed corpus stays small; copy back what is worth
  # keeping with `cargo fuzz cmin`.
  work="$(mktemp -d)"
  cp corpus/"$target"/* "$work"/
  if ! "${fuzz[@]}" run --sanitizer "${FUZZ_SANITIZER:-none}" "$target" "$work" corpus/"$target" -- \
      -max_total_time="$seconds" -timeout=10 -print_final_stats=1; then
    echo "$target: FAILED (see artifacts/$target/)" >&2
    status=1
  fi
  rm -rf "$work"
done
exit "$status"
