#!/usr/bin/env bash
# Brings up the local three-region cluster (us, eu, asia from regions/*.toml) with `afreg up`:
# for each region its own PostgreSQL cluster, its own Kubo daemon (loopback only, offline, peered
# with the others) and its own `afreg serve`, joined in one Raft group, all under one data
# directory (default .data/cluster). It prints every region's URL and writes cluster.json; the
# first run creates the admin user (password in <data>/admin-password). Ctrl-C stops everything;
# running it again reuses the data. Arguments go to `afreg up` (--data DIR, --regions DIR,
# --port-shift N).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=$(scripts/setup.sh | tail -n 1)
export PATH="$TOOLS:$PATH" AFREG_TOOLS="$TOOLS"

# Not -q: a first build takes minutes, and cargo's progress shows it is working.
echo "up: building afreg (release; the first build takes several minutes)" >&2
cargo build --release -p afreg
AFREG=${CARGO_TARGET_DIR:-target}/release/afreg
exec "$AFREG" up "$@"
