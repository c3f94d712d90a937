#!/usr/bin/env bash
# The project's test command: every unit and integration test, in release mode.
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

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --release --no-fail-fast "$@" -- --test-threads=1 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo's own last lines are its doc-test runs).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
