#!/usr/bin/env bash
# Brings up one regional node on this machine: its own PostgreSQL cluster, its own Kubo daemon
# (loopback only, offline) and `afreg serve`, all under one data directory. Running it again
# reuses the data. Ctrl-C stops everything. (The three-region `afreg up` comes with replication.)
#
# Settings (environment): AFREG_DATA (default ./.data), AFREG_PORT (5000), AFREG_PG_PORT
# (55432), AFREG_KUBO_API_PORT (55001), AFREG_KUBO_SWARM_PORT (55002), AFREG_KUBO_GATEWAY_PORT (55080).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=$(scripts/setup.sh | tail -n 1)
export PATH="$TOOLS:$PATH" IPFS_TELEMETRY=off
DATA=$(realpath -m "${AFREG_DATA:-.data}")
PORT=${AFREG_PORT:-5000}
PG_PORT=${AFREG_PG_PORT:-55432}
API_PORT=${AFREG_KUBO_API_PORT:-55001}
SWARM_PORT=${AFREG_KUBO_SWARM_PORT:-55002}
GW_PORT=${AFREG_KUBO_GATEWAY_PORT:-55080}
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
log() { echo "up: $*" >&2; }

log "building afreg (release)"
cargo build --release -q -p afreg
AFREG=${CARGO_TARGET_DIR:-target}/release/afreg

mkdir -p "$DATA"
chmod 755 "$DATA"
export IPFS_PATH="$DATA/kubo"

cleanup() {
  trap - INT TERM EXIT
  log "stopping"
  [ -n "${NODE_PID:-}" ] && kill "$NODE_PID" 2>/dev/null && wait "$NODE_PID" 2>/dev/null || true
  [ -n "${KUBO_PID:-}" ] && kill "$KUBO_PID" 2>/dev/null && wait "$KUBO_PID" 2>/dev/null || true
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$DATA/pg" -m fast stop >/dev/null 2>&1 || true
}
trap cleanup INT TERM EXIT

# ---- PostgreSQL (refuses to run as root, so it runs as the postgres user) ----------------
if [ ! -f "$DATA/pg/PG_VERSION" ]; then
  log "initialising PostgreSQL in $DATA/pg"
  mkdir -p "$DATA/pg" && chown postgres "$DATA/pg" && chmod 700 "$DATA/pg"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$DATA/pg" --auth=trust -U postgres >/dev/null
fi
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$DATA/pg" -l "$DATA/pg/postgres.log" -w \
  -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $DATA/pg" start >/dev/null
"$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='afreg'" | grep -q 1 \
  || "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres afreg

# ---- Kubo: loopback, offline, never the server profile ---------------------------------------
if [ ! -f "$IPFS_PATH/config" ]; then
  log "initialising Kubo in $IPFS_PATH"
  ipfs init --profile=test --empty-repo >/dev/null
  ipfs config Addresses.API "/ip4/127.0.0.1/tcp/$API_PORT"
  ipfs config Addresses.Gateway "/ip4/127.0.0.1/tcp/$GW_PORT"
  ipfs config --json Addresses.Swarm "[\"/ip4/127.0.0.1/tcp/$SWARM_PORT\"]"
  ipfs config --json Bootstrap '[]'
  ipfs config Routing.Type none
  ipfs config --json Discovery.MDNS.Enabled false
  ipfs config AutoNAT.ServiceMode disabled
  ipfs config --json Swarm.RelayClient.Enabled false
  ipfs config --json Swarm.RelayService.Enabled false
  ipfs config --json Swarm.Transports.Network.Relay false
  ipfs config --json Swarm.DisableNatPortMap true
  ipfs config --json Provide.Enabled false
  ipfs config --json AutoConf.Enabled false
  ipfs config --json AutoTLS.Enabled false
fi
ipfs daemon >"$DATA/kubo.log" 2>&1 &
KUBO_PID=$!
for _ in $(seq 1 100); do
  curl -sf -X POST "http://127.0.0.1:$API_PORT/api/v0/id" >/dev/null && break
  sleep 0.2
done

# ---- afreg --------------------------------------------------------------------------------
CONFIG="$DATA/afreg.toml"
if [ ! -f "$CONFIG" ]; then
  cat >"$CONFIG" <<TOML
[server]
listen = "127.0.0.1:$PORT"
public_url = "http://127.0.0.1:$PORT"

[database]
url = "postgres://postgres@127.0.0.1:$PG_PORT/afreg"

[kubo]
api_url = "http://127.0.0.1:$API_PORT"

[auth]
signing_key = "$DATA/signing-key.pem"
anonymous = ["pull"]

[log]
format = "json"
TOML
fi
if [ ! -f "$DATA/admin-password" ]; then
  head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DATA/admin-password"
  chmod 600 "$DATA/admin-password"
  "$AFREG" --config "$CONFIG" user add admin --password-stdin <"$DATA/admin-password" >/dev/null
fi

"$AFREG" --config "$CONFIG" serve 2>>"$DATA/afreg.log" &
NODE_PID=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
  sleep 0.2
done
echo "registry: http://127.0.0.1:$PORT  (user admin, password in $DATA/admin-password; logs in $DATA)"
wait "$NODE_PID"
