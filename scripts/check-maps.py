#!/usr/bin/env python3
"""Checks that every crate's module map is true: each module a crate root (`src/lib.rs`,
`src/main.rs`) declares is named, as `name` or [`name`], in that file's `//!` doc comment.
Run by scripts/lint.sh; prints each module left out and exits 1 if there is one."""

import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
missing = []
for crate_root in sorted(list(root.glob("*/src/lib.rs")) + list(root.glob("*/src/main.rs"))):
    if crate_root.parts[-3] == "fuzz":
        continue
    text = crate_root.read_text()
    doc = "\n".join(line[3:] for line in text.splitlines() if line.startswith("//!"))
    for name in re.findall(r"^(?:pub(?:\([a-z]+\))? )?mod ([a-z_0-9]+);", text, re.M):
        if f"`{name}`" not in doc and f"`{name}::" not in doc:
            missing.append(f"{crate_root.relative_to(root)}: module `{name}` is not in the module map")
for line in missing:
    print(line)
sys.exit(1 if missing else 0)
