#!/usr/bin/env bash
# The project's test command: the static checks (scripts/lint.sh: rustfmt, clippy with every
# warning an error, the module maps), every unit and integration test in release mode, then a
# brief fuzz run of each parser of client input (scripts/fuzz.sh); at the end, the slowest
# tests (scripts/test-times.py; AFREG_SLOWEST of them, default 15).
#
# The integration tests start real PostgreSQL, Kubo and afreg processes (and run crane, oras,
# skopeo, regctl and the OCI conformance suite against them), so this first runs setup.sh,
# which installs those tools (fast when they are already installed).
#   - release: the memory-ceiling and 1 GiB blob tests need an optimised node;
#   - --test-threads=1: each test starts its own Postgres/Kubo/node processes, and the machine
#     has 2 cores, so tests running side by side would starve each other into timeouts.
# Extra arguments go to `cargo test` before `--`, e.g. `scripts/test.sh -p afreg-node --test it` (then `conformance` after `--` filters).
# --no-fail-fast runs every test binary so one run reports every failure; the exit status is
# still non-zero when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=$(scripts/setup.sh | tail -n 1)
[ -d "$TOOLS" ] || { echo "test.sh: setup.sh did not print the tools directory (got '$TOOLS')" >&2; exit 1; }
export AFREG_TOOLS="$TOOLS"
export PATH="$TOOLS:$PATH"

# The deliberately broken build (feature unsafe-ack-without-quorum: writes acknowledged without
# a quorum) that the chaos suite runs a drill against, to show the checkers catch lost writes.
# Cargo keeps its artifacts beside the normal ones, so switching back costs nothing.
target_dir=${CARGO_TARGET_DIR:-target}
cargo build --release -p afreg --features unsafe-ack-without-quorum
cp "$target_dir/release/afreg" "$target_dir/release/afreg-broken"
export AFREG_BROKEN_BIN="$(cd "$target_dir/release" && pwd)/afreg-broken"

# On a full run (no arguments), the static checks first (fmt, clippy, module maps:
# scripts/lint.sh); the tests run even when they fail, and the run fails at the end.
lint_status=0
if [ $# -eq 0 ]; then
  set +e
  scripts/lint.sh
  lint_status=$?
  set -e
fi

log=$(mktemp)
times=$(mktemp)
artifacts=$(mktemp)
# Every failover drill appends its row of the drills' table here (docs/drills.md's form).
export DRILL_TABLE=$(mktemp)
trap 'rm -f "$log" "$times" "$artifacts" "$DRILL_TABLE"' EXIT
set +e
# Each test's time (scripts/test-times.py); the executables' packages come from cargo's
# artifact messages, which this build (the one the run below reuses) prints.
cargo test --workspace --release --no-run --message-format=json "$@" > "$artifacts"
cargo test --workspace --release --no-fail-fast "$@" -- --test-threads=1 2>&1 \
  | scripts/test-times.py "$times" "$artifacts" | tee "$log"
status=${PIPESTATUS[0]}
set -e
# Then a brief fuzz run of every parser of client input (scripts/fuzz.sh, the targets in fuzz/):
# AFREG_FUZZ_SECONDS per target (default 15; 0 skips it), on a full run only (no arguments).
# Its build has a target dir of its own, kept between runs like the workspace's
# (AFREG_FUZZ_TARGET_DIR, default ~/.cache/afreg/fuzz-target). Each target counts as a test.
fuzz_secs=${AFREG_FUZZ_SECONDS:-15}
if [ $# -eq 0 ] && [ "$fuzz_secs" != 0 ]; then
  set +e
  CARGO_TARGET_DIR="${AFREG_FUZZ_TARGET_DIR:-$HOME/.cache/afreg/fuzz-target}" scripts/fuzz.sh "$fuzz_secs" 2>&1 | tee -a "$log"
  fuzz_status=${PIPESTATUS[0]}
  set -e
  [ "$status" -ne 0 ] || status=$fuzz_status
fi
# One closing line over every test binary and fuzz target (cargo's own last lines are its
# doc-test runs).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     /^fuzz: [a-z0-9_]+: ok,/ { p++ } /^fuzz: [a-z0-9_]+: FAILED/ { f++ }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
scripts/test-times.py --slowest "${AFREG_SLOWEST:-15}" "$times"
[ ! -s "$DRILL_TABLE" ] || scripts/drills.sh --table "$DRILL_TABLE"
[ "$lint_status" -eq 0 ] || { echo "test.sh: the static checks failed (scripts/lint.sh, above)"; [ "$status" -ne 0 ] || status=$lint_status; }
exit "$status"
