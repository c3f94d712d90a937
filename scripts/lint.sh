#!/usr/bin/env bash
# The project's static checks, run by scripts/test.sh before the tests (and on their own):
#   - rustfmt (rustfmt.toml) over the workspace and the fuzz workspace;
#   - clippy over every target of the workspace, every warning an error;
#   - every crate's module map names every module it declares (scripts/check-maps.py).
# Each check runs even when one before it failed; the exit status is non-zero if any failed.
# clippy builds in the check profile, kept in $CARGO_TARGET_DIR like the tests' build.
set -uo pipefail
cd "$(dirname "$0")/.."

failed=()
check() { # name command...
  local name=$1
  shift
  if "$@"; then
    echo "lint: $name: ok"
  else
    echo "lint: $name: FAILED ($*)"
    failed+=("$name")
  fi
}
check fmt cargo fmt --all -- --check
check fmt-fuzz cargo fmt --manifest-path fuzz/Cargo.toml -- --check
check clippy cargo clippy -q --workspace --all-targets -- -D warnings
check module-maps scripts/check-maps.py
[ ${#failed[@]} -eq 0 ] || { echo "lint: FAILED: ${failed[*]}"; exit 1; }
