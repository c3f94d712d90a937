#!/usr/bin/env bash
# Fuzzes every parser of client input (the cargo-fuzz targets in fuzz/): builds all targets,
# then runs each for SECONDS (default 20) with libFuzzer, one after another, and fails if any
# target crashes (a panic, a broken invariant, a timeout or running out of memory).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      # every target when none is named
#
# Per target it prints the executions (libFuzzer's final stat::number_of_executed_units) and
# the outcome; a crash leaves its input in fuzz/artifacts/TARGET/ and prints how to rerun it.
#
# Choices:
#   - `-s none`, no sanitizer: the fuzzed code is safe Rust (afreg-node has no `unsafe`), so
#     AddressSanitizer would only instrument code that cannot corrupt memory. Measured here
#     (2 cores, -j1): its cold build took 15.6 min against 11.6, and in 20 s it ran 3 to 6 times
#     fewer inputs (router 0.57 M against 3.6 M, manifest 0.39 M against 2.3 M, token_request
#     0.37 M against 1.1 M) in 500 MB instead of 30. A panic, which is what a broken invariant
#     or an arithmetic overflow is, is caught without it.
#   - cargo-fuzz's defaults otherwise: optimised, with debug assertions and overflow checks.
#   - The committed seeds (fuzz/corpus/TARGET) are only read; what libFuzzer finds goes to
#     $AFREG_FUZZ_CORPUS/TARGET (default ~/.cache/afreg/fuzz-corpus), kept between runs so
#     each run starts from the coverage the last one reached (minimized past
#     $AFREG_FUZZ_CORPUS_MAX inputs, default 4000), and the work tree stays clean.
#   - The build goes to $CARGO_TARGET_DIR, else ~/.cache/afreg/fuzz-target, so CI caches it
#     (cargo-fuzz builds for an explicit --target, so it never touches the workspace's own
#     target/release even when both share one directory).
#   - The nightly toolchain when rustup has one; else the default one: without a sanitizer,
#     cargo-fuzz passes only flags stable rustc accepts (checked with stable 1.95: it builds,
#     in 10.4 min cold, and fuzzes with coverage like nightly's).
#   - cargo-fuzz comes from scripts/setup.sh, in $AFREG_TOOLS (default ~/.cache/afreg/bin).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-20}
shift $(( $# > 0 ? 1 : 0 ))
[[ "$secs" =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2; }

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/afreg/fuzz-target}
export PATH="${AFREG_TOOLS:-$HOME/.cache/afreg/bin}:$PATH"
corpus_root=${AFREG_FUZZ_CORPUS:-$HOME/.cache/afreg/fuzz-corpus}
max_kept=${AFREG_FUZZ_CORPUS_MAX:-4000}
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz is not installed: run scripts/setup.sh" >&2; exit 1; }
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then toolchain=(+nightly); fi
build_flags=(-s none)

cd fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)

started=$SECONDS
echo "fuzz: building ${targets[*]} (cargo ${toolchain[*]:-} fuzz build ${build_flags[*]}) into $CARGO_TARGET_DIR"
cargo "${toolchain[@]}" fuzz build "${build_flags[@]}"
echo "fuzz: built in $((SECONDS - started)) s"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$corpus_root/$t" "corpus/$t"
  t0=$SECONDS
  set +e
  # New inputs go to the first corpus directory; the committed seeds are read from the second.
  cargo "${toolchain[@]}" fuzz run "${build_flags[@]}" "$t" "$corpus_root/$t" "corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 >"$logs/$t" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t" | tail -n 1)
  if [ "$rc" -eq 0 ]; then
    echo "fuzz: $t: ok, ${execs:-?} executions in $((SECONDS - t0)) s"
    # Keep the kept corpus small enough to load quickly: past $max_kept inputs, minimize it.
    if [ "$(find "$corpus_root/$t" -type f | wc -l)" -gt "$max_kept" ]; then
      rm -rf "$corpus_root/$t.min" && mkdir "$corpus_root/$t.min"
      if cargo "${toolchain[@]}" fuzz run "${build_flags[@]}" "$t" "$corpus_root/$t.min" "$corpus_root/$t" -- -merge=1 >"$logs/$t.min" 2>&1; then
        rm -rf "$corpus_root/$t" && mv "$corpus_root/$t.min" "$corpus_root/$t"
      fi
    fi
  else
    failed+=("$t")
    echo "fuzz: $t: FAILED (exit $rc) after ${execs:-?} executions in $((SECONDS - t0)) s:"
    # The panic (a broken invariant) or libFuzzer's verdict, the input, how to rerun it.
    # (None of these may match: then libFuzzer's last lines. The pipeline must not end the
    # script under `set -e`, or the other targets would not run.)
    why=$({ grep -m1 -A1 'panicked at' "$logs/$t"; grep -m2 -E '^==[0-9]+== ERROR|^error|^ERROR' "$logs/$t"
      grep -A1 -E '^(Failing input|Reproduce with):' "$logs/$t"; } | grep -v -e '^--$' -e '^$' || true)
    [ -n "$why" ] || why=$(grep -v -E '^#[0-9]+' "$logs/$t" | tail -n 15)
    printf '%s\n' "$why" | sed "s/^/fuzz: $t: /"
  fi
done
echo "fuzz: done in $((SECONDS - started)) s: $(( ${#targets[@]} - ${#failed[@]} )) of ${#targets[@]} targets passed"
[ ${#failed[@]} -eq 0 ] || { echo "fuzz: failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2; exit 1; }
