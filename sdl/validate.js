#!/usr/bin/env node
// Validates Akash SDL files with Akash's own parser, @akashnetwork/akashjs (installed by
// scripts/setup.sh into ~/.cache/afreg/npm; run with NODE_PATH=~/.cache/afreg/npm/node_modules).
//
//   node sdl/validate.js [--manifest] FILE...
//
// Each file is parsed as the deployment tools do (SDL.fromString(yaml, "beta3")), then turned
// into the on-chain deployment groups and the provider manifest, which is where missing
// profiles, pricing or endpoints surface. Prints "ok FILE" per valid file (with --manifest,
// one JSON line {file, manifest, groups} instead); for an invalid one, "FILE: ERROR" on stderr.
// Exits 1 if any file is invalid, 2 on bad usage.
"use strict";

const fs = require("fs");

let SDL;
try {
  ({ SDL } = require("@akashnetwork/akashjs/build/sdl"));
} catch (e) {
  console.error(`validate.js: cannot load @akashnetwork/akashjs (${e.message}); run scripts/setup.sh and set NODE_PATH`);
  process.exit(2);
}

const args = process.argv.slice(2);
const printManifest = args[0] === "--manifest";
const files = printManifest ? args.slice(1) : args;
if (files.length === 0) {
  console.error("usage: node sdl/validate.js [--manifest] FILE...");
  process.exit(2);
}

// Resource quantities are Uint8Arrays in the group specs; show them as their text.
const bytesAsText = (_k, v) => (v instanceof Uint8Array ? Buffer.from(v).toString() : v);

async function check(file) {
  const sdl = SDL.fromString(fs.readFileSync(file, "utf8"), "beta3");
  const groups = sdl.groups();
  const manifest = sdl.manifest(true);
  await sdl.manifestVersion();
  return { groups, manifest };
}

(async () => {
  let bad = 0;
  for (const file of files) {
    try {
      const { groups, manifest } = await check(file);
      console.log(printManifest ? JSON.stringify({ file, manifest, groups }, bytesAsText) : `ok ${file}`);
    } catch (e) {
      bad += 1;
      console.error(`${file}: ${e && e.name ? e.name : "Error"}: ${e && e.message ? e.message : e}`);
    }
  }
  process.exit(bad ? 1 : 0);
})();
