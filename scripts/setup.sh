#!/usr/bin/env bash
# Installs every external piece afreg's tests and local cluster need, idempotently.
#
#   - PostgreSQL server, skopeo, podman (with runc), docker-compose (the Compose file check) and
#     busybox-static (the image's shell) from Debian;
#   - Prometheus (the Grafana dashboard's test) and Chromium (the console's) from Debian;
#   - Kubo (IPFS), crane, oras, regctl from their Go modules;
#   - the OCI distribution-spec conformance suite, built with `go test -c`;
#   - Pebble, Let's Encrypt's ACME test server, and its test certificates;
#   - cargo-fuzz (scripts/fuzz.sh), from crates.io;
#   - the benchmark's peers: Debian's docker-registry (distribution 2.8), and zot if the Go
#     module proxy serves it (tried at most once a day).
#
# Go-built tools and cargo-fuzz land in $AFREG_TOOLS (default ~/.cache/afreg/bin) and are
# rebuilt only when their pinned version changes, so a second run takes seconds.
# Print the tools directory on stdout's last line so callers can `PATH=$(...):$PATH`.
set -euo pipefail

TOOLS=${AFREG_TOOLS:-$HOME/.cache/afreg/bin}
mkdir -p "$TOOLS"
log() { echo "setup: $*" >&2; }

# Installs Debian packages whose service must not start (the tests run their own instances):
# when no policy-rc.d exists, one that refuses every start is in place for the install.
apt_install_no_start() {
  log "apt-get install $* (service not started)"
  export DEBIAN_FRONTEND=noninteractive
  local policy_added=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy_added=1
  fi
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "$@" >&2
  [ -z "$policy_added" ] || rm -f /usr/sbin/policy-rc.d
}

# ---- Debian packages -------------------------------------------------------------
# faketime: the clock-skew drill starts a node with its wall clock off (libfaketime).
DEB_PKGS=(postgresql skopeo podman runc docker-compose busybox-static faketime)
missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
# Debian's postgresql package creates and starts a default cluster; tests run their own.
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$PG_BIN/initdb" ] || { log "no initdb under $PG_BIN"; exit 1; }

# ---- Go tools --------------------------------------------------------------------
# v0.39.0 is the last tag `go install` accepts. Its cockroachdb/swiss dependency guards its
# runtime hooks with `go1.20 && !go1.26 || untested_go_version`, so on Go 1.26 it needs that tag.
# (v0.43.1, the newest served, replaces go-libp2p with a fork the module proxy does not serve.)
KUBO_VERSION=v0.39.0
CRANE_VERSION=v0.22.1
ORAS_VERSION=v1.3.6
REGCTL_VERSION=v0.11.7
DISTRIBUTION_VERSION=v3.0.0
# Let's Encrypt's ACME test server, for the automatic-TLS test.
PEBBLE_VERSION=v2.10.3
# The conformance module is not served at tag v1.1.1 by the Go module proxy (the tag is on
# the root module, and nested-module zips are not published for it). This is the newest
# served build of the classic Ginkgo suite, the one with the OCI_ROOT_URL/OCI_TEST_* variables.
CONFORMANCE_VERSION=v0.0.0-20231101194043-f2182352d4cc

export GOFLAGS=-buildvcs=false
stamp() { echo "$TOOLS/.$1.version"; }
have() { [ -x "$TOOLS/$1" ] && [ "$(cat "$(stamp "$1")" 2>/dev/null)" = "$2" ]; }

go_install() { # name module version
  local name=$1 module=$2 version=$3
  if have "$name" "$version"; then return; fi
  log "go install $module@$version"
  GOBIN="$TOOLS" go install "$module@$version" >&2
  echo "$version" > "$(stamp "$name")"
}

if ! have ipfs "$KUBO_VERSION"; then
  log "go install kubo $KUBO_VERSION"
  GOBIN="$TOOLS" GOFLAGS="$GOFLAGS -tags=untested_go_version" go install "github.com/ipfs/kubo/cmd/ipfs@$KUBO_VERSION" >&2
  echo "$KUBO_VERSION" > "$(stamp ipfs)"
fi
go_install crane github.com/google/go-containerregistry/cmd/crane "$CRANE_VERSION"
go_install oras oras.land/oras/cmd/oras "$ORAS_VERSION"
go_install regctl github.com/regclient/regclient/cmd/regctl "$REGCTL_VERSION"
# The reference registry (distribution), the peer the throughput benchmark compares against.
go_install registry github.com/distribution/distribution/v3/cmd/registry "$DISTRIBUTION_VERSION"

go_install pebble github.com/letsencrypt/pebble/v2/cmd/pebble "$PEBBLE_VERSION"
# Pebble's own HTTPS certificate (for localhost and 127.0.0.1) and its CA, from the module.
if [ "$(cat "$TOOLS/pebble-certs/.version" 2>/dev/null)" != "$PEBBLE_VERSION" ]; then
  src=$(go mod download -json "github.com/letsencrypt/pebble/v2@$PEBBLE_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$src" ] || { log "pebble module download failed"; exit 1; }
  rm -rf "$TOOLS/pebble-certs" && mkdir -p "$TOOLS/pebble-certs"
  cp -r "$src/test/certs/." "$TOOLS/pebble-certs/" && chmod -R u+w "$TOOLS/pebble-certs"
  echo "$PEBBLE_VERSION" > "$TOOLS/pebble-certs/.version"
fi

if ! have oci-conformance "$CONFORMANCE_VERSION"; then
  log "building the OCI conformance suite $CONFORMANCE_VERSION"
  src=$(go mod download -json "github.com/opencontainers/distribution-spec/conformance@$CONFORMANCE_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$src" ] || { log "conformance module download failed"; exit 1; }
  work=$(mktemp -d)
  cp -r "$src"/. "$work"/ && chmod -R u+w "$work"
  (cd "$work" && go test -c -o "$TOOLS/oci-conformance" . >&2)
  rm -rf "$work"
  echo "$CONFORMANCE_VERSION" > "$(stamp oci-conformance)"
fi

# ---- cargo-fuzz: the libFuzzer driver of scripts/fuzz.sh (fuzz/) ---------------------------
# Built from crates.io with its own lock file into $TOOLS, in a scratch target dir (not the
# project's), and rebuilt only when the pinned version changes. Honours CARGO_BUILD_JOBS.
CARGO_FUZZ_VERSION=0.13.2
if ! have cargo-fuzz "$CARGO_FUZZ_VERSION"; then
  log "cargo install cargo-fuzz $CARGO_FUZZ_VERSION"
  work=$(mktemp -d)
  cargo install --locked --quiet --version "$CARGO_FUZZ_VERSION" --root "$work" --target-dir "$work/target" cargo-fuzz >&2
  mv "$work/bin/cargo-fuzz" "$TOOLS/cargo-fuzz"
  rm -rf "$work"
  echo "$CARGO_FUZZ_VERSION" > "$(stamp cargo-fuzz)"
fi

# ---- Node.js: Akash's own SDL parser, for sdl/validate.js (tests: cli/tests/it/sdl.rs) --------
# @akashnetwork/akashjs goes into $AFREG_NPM (default ~/.cache/afreg/npm); run the validator
# with NODE_PATH=$AFREG_NPM/node_modules. --ignore-scripts: the package's root import pulls in
# keytar, whose native build fails, and the SDL module needs no build step.
AKASHJS_VERSION=0.11.1
NPM_DIR=${AFREG_NPM:-$HOME/.cache/afreg/npm}
for need in node:nodejs npm:npm; do
  if ! command -v "${need%%:*}" >/dev/null; then
    log "apt-get install ${need#*:}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${need#*:}" >&2
  fi
done
# npm_install PACKAGE VERSION: into $NPM_DIR, unless that version is there already.
npm_install() {
  local installed
  installed=$(node -p "require('$NPM_DIR/node_modules/$1/package.json').version" 2>/dev/null || true)
  if [ "$installed" != "$2" ]; then
    log "npm install $1@$2 into $NPM_DIR"
    mkdir -p "$NPM_DIR"
    npm install --prefix "$NPM_DIR" --save-exact --ignore-scripts --no-audit --no-fund --loglevel=error "$1@$2" >&2
  fi
}
npm_install @akashnetwork/akashjs "$AKASHJS_VERSION"

# ---- The web console's browser tests: Debian's Chromium driven by playwright-core ----------
# (node/tests/it/console.rs runs node/tests/console/console.cjs). playwright-core carries no
# browser and downloads none: the script launches /usr/bin/chromium through executablePath.
PLAYWRIGHT_VERSION=1.64.1
if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed"; then
  log "apt-get install chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends chromium >&2
fi
npm_install playwright-core "$PLAYWRIGHT_VERSION"

# ---- Prometheus from Debian (node/tests/it/dashboard.rs scrapes a cluster and runs every query
# of docs/grafana/afreg.json). The test runs its own prometheus; the packaged service is not started.
dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q "install ok installed" \
  || apt_install_no_start prometheus

# ---- GeoDNS: PowerDNS and a GeoIP database writer (tests: cli/tests/it/geodns.rs) -------------
# pdns-server with the bind backend (serves the rendered zone) and the geoip backend (gives the
# LUA records' continent() its MaxMind database). The tests run their own pdns_server on a
# loopback port with their own --config-dir; Debian's pdns service is never wanted here, so
# when no policy-rc.d exists one is put in place for the install, and the service is not started.
PDNS_PKGS=(pdns-server pdns-backend-bind pdns-backend-geoip)
missing=()
for p in "${PDNS_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] || apt_install_no_start "${missing[@]}"
# mmdb-writer + netaddr (PyPI, pinned) in a venv, for scripts/make-test-mmdb.py; the CloudEvents
# SDK for the notification tests' CloudEvents receiver (testkit/receivers/).
PY_DIR=${AFREG_PY:-$HOME/.cache/afreg/py}
PY_PKGS="mmdb-writer==0.2.7 netaddr==1.3.0 cloudevents==2.2.0"
if [ "$(cat "$PY_DIR/.afreg-packages" 2>/dev/null)" != "$PY_PKGS" ] \
   || ! "$PY_DIR/bin/python3" -c 'import mmdb_writer, netaddr, cloudevents.core.bindings.http' 2>/dev/null; then
  log "python venv $PY_DIR with $PY_PKGS"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends python3 python3-venv >&2
  fi
  rm -rf "$PY_DIR"
  python3 -m venv "$PY_DIR" >&2
  # shellcheck disable=SC2086
  "$PY_DIR/bin/pip" install -q --disable-pip-version-check $PY_PKGS >&2
  echo "$PY_PKGS" > "$PY_DIR/.afreg-packages"
fi

# ---- Benchmark peers (afreg bench, the bench/ package) ---------------------------------------
# distribution 2.8 is Debian's docker-registry; the bench runs its own `docker-registry serve
# CONFIG`, so the packaged service is not started. (distribution v3 is `registry` above.)
dpkg-query -W -f='${Status}' docker-registry 2>/dev/null | grep -q "install ok installed" \
  || apt_install_no_start docker-registry
# zot: the Go module proxy refuses zotregistry.dev/zot/v2 here (403), so this is tried once a
# day at most (a stamp), never fatally; the refusal's error line is kept in $TOOLS/zot.unavailable
# and `afreg bench` reports zot as "unavailable: <that line>".
ZOT_STAMP="$TOOLS/.zot.tried"
if [ ! -x "$TOOLS/zot" ] && { [ ! -e "$ZOT_STAMP" ] || [ -n "$(find "$ZOT_STAMP" -mmin +1440)" ]; }; then
  log "go install zotregistry.dev/zot/v2/cmd/zot@latest (may be refused)"
  touch "$ZOT_STAMP"
  if zot_err=$(GOBIN="$TOOLS" go install zotregistry.dev/zot/v2/cmd/zot@latest 2>&1); then
    rm -f "$TOOLS/zot.unavailable"
  else
    printf '%s\n' "$zot_err" | grep -v '^go: downloading' | tail -n 1 > "$TOOLS/zot.unavailable"
    log "zot unavailable: $(cat "$TOOLS/zot.unavailable")"
  fi
fi

# ---- dockerd: Debian's docker.io, a real client for the tests (node/tests/it/clients.rs) ------------
# The tests start their own dockerd (no iptables, no bridge, vfs, their own socket and data
# root); Debian's docker service is never wanted, so it is not started by the install.
command -v dockerd >/dev/null || apt_install_no_start docker.io

log "tools ready in $TOOLS"
echo "$TOOLS"
