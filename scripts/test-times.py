#!/usr/bin/env python3
"""Times every test of a `cargo test` run from its output, for scripts/test.sh.

    cargo test ... 2>&1 | scripts/test-times.py TIMES [ARTIFACTS]

Copies its input to stdout as it comes, and appends one line per finished test to TIMES:
seconds, test binary, test name, outcome (tab-separated). libtest has no per-test time on
stable Rust (`--report-time` is unstable), but the suite runs one test at a time, so a test's
time is from the line before its result (the previous result, or its binary's start) to its own
result line. ARTIFACTS, if given, is `cargo test --no-run --message-format=json` output: it names
each test executable's package, which cargo's "Running" lines leave out.

    scripts/test-times.py --slowest N TIMES

prints the N slowest tests, slowest first.
"""

import json
import os
import re
import sys
import time


def packages(path):
    """Executable file name (it-0123abcd...) -> "package/target" from cargo's artifact messages."""
    names = {}
    with open(path) as f:
        for line in f:
            try:
                m = json.loads(line)
            except ValueError:
                continue
            if m.get("reason") == "compiler-artifact" and m.get("executable"):
                # "path+file:///w/node#afreg-node@0.1.0", or "...testkit#0.1.0" when the
                # package is named like its folder.
                source, _, spec = m["package_id"].partition("#")
                package = spec.split("@")[0] if "@" in spec else source.rstrip("/").rsplit("/", 1)[-1]
                names[m["executable"].rsplit("/", 1)[-1]] = f"{package}/{m['target']['name']}"
    return names


def lines():
    """stdin's lines as they arrive: sys.stdin's buffer waits to fill, which would lump times."""
    pending = b""
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.decode("utf-8", "replace") + "\n"
    if pending:
        yield pending.decode("utf-8", "replace")


def record(times_path, artifacts_path):
    names = packages(artifacts_path) if artifacts_path else {}
    running = re.compile(r"^\s+Running (?:unittests )?(\S+) \((.+)\)$")
    result = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)")
    started = re.compile(r"^test (\S+) \.\.\. ")
    late_result = re.compile(r"^(ok|FAILED|ignored)\s*$")
    binary, since, pending = "?", time.monotonic(), None
    with open(times_path, "a") as out:
        for line in lines():
            sys.stdout.write(line)
            sys.stdout.flush()
            now = time.monotonic()
            m = running.match(line)
            if m:
                executable = m.group(2).rsplit("/", 1)[-1]
                binary = names.get(executable, m.group(1))
                since, pending = now, None
                continue
            if re.match(r"^running \d+ tests?$", line):
                since = now
                continue
            m = result.match(line)
            if m:
                name, outcome = m.group(1), m.group(2)
            elif pending and late_result.match(line):
                # A test whose child processes wrote to the terminal ends on a line of its own.
                name, outcome = pending, late_result.match(line).group(1)
            else:
                m = started.match(line)
                if m:
                    pending = m.group(1)
                continue
            out.write(f"{now - since:.1f}\t{binary}\t{name}\t{outcome}\n")
            out.flush()
            since, pending = now, None


def slowest(n, times_path):
    rows = []
    with open(times_path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 4:
                rows.append((float(parts[0]), parts[1], parts[2], parts[3]))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"slowest {min(n, len(rows))} of {len(rows)} tests ({total:.0f} s of tests in all):")
    for seconds, binary, name, outcome in rows[:n]:
        flag = "" if outcome == "ok" else f"  [{outcome}]"
        print(f"  {seconds:7.1f} s  {binary}  {name}{flag}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--slowest":
        slowest(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) in (2, 3):
        record(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None)
    else:
        sys.exit(__doc__)
