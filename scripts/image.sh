#!/usr/bin/env bash
# Builds afreg's container image offline and without a daemon, from the local release build:
# one layer holding the stripped binary, the shared libraries `ldd` says it needs, CA
# certificates, a non-root user (10001) and busybox (a shell for `lease-shell` and
# `podman exec`: copying certificates onto the volume, looking around), on an empty OCI base; the entry point
# (`afreg serve`), user, working directory and ports are set as the Containerfile sets them.
# crane assembles it through a registry of its own on loopback (crane mutate edits images in
# a registry), and the result is written as an OCI archive tagged afreg:<crate version>.
#
#   scripts/image.sh                       # writes target/image/afreg-<version>.oci.tar
#   scripts/image.sh --push HOST:PORT/REPO # also pushes it there (e.g. into a running region:
#                                          #   127.0.0.1:5000/afreg/afreg), tagged <version>;
#                                          #   log in first: crane auth login HOST:PORT -u …
#   scripts/image.sh --out DIR             # writes the archive into DIR
# AFREG_BIN=PATH uses that afreg binary instead of building one (the tests pass theirs).
#
# The archive's path is the last line printed. `podman load -i` and `docker load -i` take it.
set -euo pipefail
cd "$(dirname "$0")/.."

push=
out=
while [ $# -gt 0 ]; do
  case "$1" in
    --push) push=${2:?--push needs HOST:PORT/REPO}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    *) echo "image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

TOOLS=$(scripts/setup.sh | tail -n 1)
export PATH="$TOOLS:$PATH"
log() { echo "image: $*" >&2; }

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${AFREG_BIN:-}
if [ -z "$BIN" ]; then
  log "building afreg $VERSION (release)"
  cargo build --release -q -p afreg
  BIN=$TARGET/release/afreg
fi

# The image carries the server and the operator's tools, never test code: the benchmark is a
# binary of its own (afreg-bench), so nothing the afreg binary links depends on testkit.
if cargo tree -q -p afreg -e normal --prefix none | grep -Eq '^(testkit|afreg-bench) '; then
  log "the afreg binary links test code: $(cargo tree -q -p afreg -e normal -i testkit 2>&1 | head -n 5 | tr '\n' ' ')"
  exit 1
fi
log "afreg links no test code (cargo tree -p afreg -e normal: no testkit, no afreg-bench)"

work=$(mktemp -d)
registry_pid=
cleanup() { [ -z "$registry_pid" ] || kill "$registry_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# ---- the root file system -------------------------------------------------------------------
root=$work/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/data" "$root/tmp"
cp "$BIN" "$root/usr/local/bin/afreg"
strip "$root/usr/local/bin/afreg"
# The dynamic loader and every library the binary links (glibc, libgcc_s, libm).
for lib in $(ldd "$BIN" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
mkdir -p "$root/bin"
cp /bin/busybox "$root/bin/busybox"
for applet in sh cat ls mkdir rm cp mv kill ps env; do ln -s busybox "$root/bin/$applet"; done
printf 'root:x:0:0:root:/root:/sbin/nologin\nafreg:x:10001:10001:afreg:/data:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nafreg:x:10001:\n' > "$root/etc/group"
chmod 1777 "$root/tmp"
# Everything owned by root but the state directory, which is the user's.
layer=$work/layer.tar
(cd "$root" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$layer" --exclude=./data .)
(cd "$root" && tar --sort=name --mtime=@0 --owner=10001 --group=10001 --numeric-owner -rf "$layer" ./data)

# ---- the image, through crane's own registry on loopback ------------------------------------
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
crane registry serve --address "127.0.0.1:$port" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
ref=127.0.0.1:$port/afreg:$VERSION
crane append --insecure --oci-empty-base -f "$layer" -t "$ref" >/dev/null
crane mutate --insecure "$ref" -t "$ref" \
  --entrypoint /usr/local/bin/afreg --cmd serve --user 10001:10001 --workdir /data \
  --env PATH=/usr/local/bin:/bin \
  --exposed-ports 5000/tcp,5100/tcp \
  -l org.opencontainers.image.title=afreg -l "org.opencontainers.image.version=$VERSION" >/dev/null

out=${out:-$TARGET/image}
mkdir -p "$out"
layout=$work/layout
crane pull --insecure --format=oci "$ref" "$layout"
# Name the image afreg:<version> in the archive, not after the throwaway registry.
python3 - "$layout/index.json" "afreg:$VERSION" <<'PY'
import json, sys
path, name = sys.argv[1], sys.argv[2]
index = json.load(open(path))
for m in index["manifests"]:
    m.setdefault("annotations", {})["org.opencontainers.image.ref.name"] = name
json.dump(index, open(path, "w"))
PY
archive=$(cd "$out" && pwd)/afreg-$VERSION.oci.tar
(cd "$layout" && tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$archive" .)
log "image afreg:$VERSION: $(du -h "$archive" | cut -f1)"

if [ -n "$push" ]; then
  log "pushing to $push:$VERSION"
  crane push "$layout" "$push:$VERSION"
fi
echo "$archive"
