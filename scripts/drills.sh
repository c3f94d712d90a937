#!/usr/bin/env bash
# Regenerates docs/drills.md: every failover drill of the chaos suite once, in its short form
# (one round, what CI runs), one row each: operations, writes acknowledged, unknown and lost,
# the linearizability verdict, failover p50/p99 and the time to converge.
#
#   scripts/drills.sh [FILTER]     # every drill (about 10 minutes on 2 cores), or those matching
#   scripts/drills.sh --table ROWS # the table of rows the drills wrote to $DRILL_TABLE (test.sh)
#   scripts/drills.sh --write ROWS [COMMIT]  # docs/drills.md from such rows (a full test run's)
set -euo pipefail
cd "$(dirname "$0")/.."

table() { # rows file
  echo "| scenario | seed,rounds | ops | acked | unknown | lost | linearizable | failover p50/p99 | converged |"
  echo "|---|---|---|---|---|---|---|---|---|"
  sort "$1"
}
if [ "${1:-}" = "--table" ]; then
  echo "drills, one round each (scripts/drills.sh writes docs/drills.md):"
  table "$2"
  exit 0
fi

write() { # rows file, [the commit they were measured at]
  out=docs/drills.md
  local commit=${2:-$(git rev-parse --short HEAD)}
  {
    echo "# Failover drills, one round of each"
    echo
    echo "Every failover drill of the chaos suite (\`chaos-tests/tests/scenarios/drill.rs\`) once, in the"
    echo "short form CI runs, on $(date -u +%Y-%m-%d) at commit $commit ($(nproc) cores)."
    echo "Regenerate it with \`scripts/drills.sh\`, which rewrites this file; \`scripts/test.sh\` prints"
    echo "the same table at the end of every full run."
    echo
    echo "- **ops**: operations the mixed workload sent; **acked**: writes acknowledged; **unknown**:"
    echo "  writes whose outcome their client could not know (a timeout, a connection lost); **lost**:"
    echo "  acknowledged writes that did not read back from every region. It must be 0."
    echo "- **linearizable**: the hot tags' history under stateright's linearizability checker."
    echo "- **failover**: from the leader lost to the first write acknowledged after it (bound 6 s);"
    echo "  \"-\" where the scenario does not take the leader away."
    echo "- **converged**: from the workload's end until tags and pins are identical in every region."
    echo "- The deliberately broken build's drill (\`afreg-broken\`, which acknowledges writes without"
    echo "  a quorum) is not a row: it must lose writes, and its test asserts that the checkers say so."
    echo
    table "$1"
  } > "$out"
  echo "drills: wrote $out"
}
if [ "${1:-}" = "--write" ]; then
  write "$2" "${3:-}"
  exit 0
fi

TOOLS=$(scripts/setup.sh | tail -n 1)
export AFREG_TOOLS="$TOOLS" PATH="$TOOLS:$PATH"
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
export DRILL_TABLE=$rows
cargo build --release -q -p afreg
# The broken build's drill is left out (see below), so its binary is not needed.
cargo test --release -q -p chaos-tests --test scenarios -- --test-threads=1 --skip drill_catches "${1:-drill_}"
write "$rows"
