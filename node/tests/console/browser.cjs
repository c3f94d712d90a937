// What the console's browser scripts share: Debian's Chromium launched headless through
// playwright-core (never a downloaded browser), with the flags this machine's closed network
// needs, and a required environment variable.
"use strict";

const { chromium } = require("playwright-core");

function launch() {
  return chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
}

function env(k) {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
}

module.exports = { launch, env };
