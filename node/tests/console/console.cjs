// The web console in a real browser: Debian's Chromium driven by playwright-core (no browser
// download; scripts/setup.sh installs both). Run by node/tests/it/console.rs, which starts the
// cluster, pushes the images and passes what it pushed in the environment:
//
//   US_URL, EU_URL, ASIA_URL  each region's public URL   PULL_HOST  us's host:port
//   V1_DIGEST   team/app:v1's manifest digest             V1_LAYERS  its layer count
//   SBOM_TYPE   the artifact type of v1's referrer        SECRET     other/secret:v1's digest
//   SCREENSHOTS a directory for the pages' screenshots    SIGNAL     a file to create when the
//               test should stop asia's node (the test then does, and the page must show it)
//
// It exits non-zero at the first check that fails, saying which; on success it prints one
// JSON line of what it saw.
"use strict";

const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { launch, env } = require("./browser.cjs");

const base = env("US_URL").replace(/\/$/, "");
const v1 = env("V1_DIGEST");
const shots = env("SCREENSHOTS");
const today = new Date().toISOString().slice(5, 10);

async function login(page, user, password) {
  await page.goto(`${base}/ui/login`);
  await page.fill("input[name=username]", user);
  await page.fill("input[name=password]", password);
  await page.click("button[type=submit]");
}

const texts = (page, sel) => page.$$eval(sel, (els) => els.map((e) => e.textContent.trim()));

async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

/// At a phone's width the page itself never scrolls sideways (wide tables scroll in their box).
async function fitsNarrow(page, name) {
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `${name} is ${overflow} px wider than a 390 px screen`);
  await shot(page, `${name}-390`);
  await page.setViewportSize({ width: 1280, height: 800 });
}

async function main() {
  const browser = await launch();
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  const page = await context.newPage();
  const requests = [];
  const problems = [];
  const refused = [];
  page.on("request", (r) => requests.push(r.url()));
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  // A refused request is also logged by the browser; those are checked as responses below.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(`console error: ${m.text()}`);
  });
  page.on("response", (r) => { if (r.status() >= 400) refused.push(`${r.status()} ${new URL(r.url()).pathname}`); });
  const regionUrls = [env("US_URL"), env("EU_URL"), env("ASIA_URL")].map((u) => u.replace(/\/$/, ""));

  // Signed out, with no anonymous access: the login page, its focus visible from the keyboard.
  await page.goto(`${base}/ui/`);
  assert.match(page.url(), /\/ui\/login$/, "a signed-out visitor is sent to the login page");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  const focus = await page.evaluate(() => {
    const e = document.activeElement;
    const s = getComputedStyle(e);
    return { tag: e.tagName, outline: s.outlineStyle, width: s.outlineWidth };
  });
  assert.ok(focus.tag !== "BODY" && focus.outline !== "none" && focus.width !== "0px", `focus shows: ${JSON.stringify(focus)}`);
  await shot(page, "login");
  await login(page, "team", "not-the-password");
  assert.match(await page.textContent("#login-error"), /invalid username or password/);

  // ops pushed the images with crane: every repository, its tags and size.
  await login(page, "ops", "ops-password");
  assert.equal(await page.textContent("#user"), "ops");
  assert.deepEqual(await texts(page, "#repositories tbody tr td:first-child"), ["other/secret", "team/app", "team/web"]);
  const sizes = await texts(page, "#repositories tbody tr td:nth-child(2)");
  assert.ok(sizes.every((s) => /^[0-9.]+ (B|KiB|MiB)$/.test(s) && !s.startsWith("0 ")), `sizes: ${sizes}`);
  assert.deepEqual(await texts(page, "#repositories tbody tr td:nth-child(3)"), ["1", "2", "1"], "tag counts");
  await shot(page, "repositories");
  await fitsNarrow(page, "repositories");

  // team/app: its tags, platforms, referrers, pulls split by region, and the pull command.
  await page.click("text=team/app");
  assert.match(page.url(), /\/ui\/repository\?name=team%2Fapp$/);
  const row = (tag) => `#tags tr[data-tag="${tag}"]`;
  assert.match(await page.textContent(`${row("multi")} td.platforms`), /linux\/amd64, linux\/arm64\/v8/);
  assert.match(await page.textContent(`${row("v1")} ul.referrers`), new RegExp(env("SBOM_TYPE").replace(/[+.]/g, "\\$&")));
  assert.equal(Number(await page.textContent(`${row("v1")} td.pulls`)), 5, "five pulls of v1");
  assert.equal((await page.textContent(`${row("v1")} td.regions`)).trim(), "asia 2, eu 3", "the pulls split by region");
  const pull = `docker pull ${env("PULL_HOST")}/team/app:v1`;
  assert.equal(await page.textContent(`${row("v1")} code.pull`), pull);
  await page.click(`${row("v1")} button.copy`);
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), pull, "the pull command is copied");
  await shot(page, "repository");
  await fitsNarrow(page, "repository");

  // A manifest: its config and layers.
  await page.click(`${row("v1")} td:nth-child(2) a`);
  assert.equal(await page.textContent("#digest"), v1);
  assert.equal(await page.$$eval("#layers tbody tr", (r) => r.length), Number(env("V1_LAYERS")));
  assert.ok((await page.textContent("#config")).startsWith("sha256:"));
  await shot(page, "manifest");

  // Usage: the pulls of today, 3 in eu and 2 in asia, in the chart; the top repositories.
  await page.goto(`${base}/ui/usage`);
  assert.equal(await page.$$eval("figure.chart svg", (s) => s.length), 2);
  const bars = await page.$$eval("figure.chart:first-of-type rect.bar title", (t) => t.map((x) => x.textContent));
  assert.ok(bars.includes(`eu ${today}: 3`) && bars.includes(`asia ${today}: 2`), `today's bars: ${bars.filter((b) => b.includes(today))}`);
  assert.equal((await texts(page, "#top tbody td:first-child"))[0], "team/app");
  await shot(page, "usage");

  // A tag deleted by ops: gone from every region's page.
  await page.goto(`${base}/ui/repository?name=team%2Fweb`);
  await page.click(`${row("v1")} a.delete-tag`);
  assert.match(await page.textContent("main"), /cannot be undone/);
  await shot(page, "delete");
  await page.click("#confirm");
  assert.match(await page.textContent("#deleted"), /^Deleted v1\.$/);
  for (const region of regionUrls) {
    let left = -1;
    for (let i = 0; i < 50 && left !== 0; i++) {
      await page.goto(`${region}/ui/repository?name=team%2Fweb`);
      left = await page.$$eval(row("v1"), (r) => r.length);
      if (left !== 0) await page.waitForTimeout(200);
    }
    assert.equal(left, 0, `team/web:v1 still listed at ${region}`);
  }
  // And a manifest, with every tag naming it.
  await page.goto(`${base}/ui/manifest?name=team%2Fapp&digest=${encodeURIComponent(v1)}`);
  await page.click("#delete");
  await page.click("#confirm");
  assert.equal(await page.$$eval(row("v1"), (r) => r.length), 0, "the tag went with its manifest");

  // The cluster, refreshed live: asia stopped shows as unreachable within 10 s.
  await page.goto(`${base}/ui/cluster`);
  assert.deepEqual((await page.$$eval("#regions tbody tr", (r) => r.map((x) => x.dataset.region))).sort(), ["asia", "eu", "us"]);
  const roles = await texts(page, "#regions td.role");
  assert.equal(roles.filter((r) => r === "leader").length, 1, `one leader: ${roles}`);
  await shot(page, "cluster");
  await fitsNarrow(page, "cluster");
  fs.writeFileSync(env("SIGNAL"), "stop asia");
  const stoppedAt = Date.now();
  await page.waitForSelector('#regions tr[data-region="asia"].down', { timeout: 30000 });
  const seenIn = Date.now() - stoppedAt;
  assert.ok(seenIn <= 10000, `asia shown unreachable after ${seenIn} ms`);
  await shot(page, "cluster-region-down");

  // team may pull team/* only: no other repository, no delete.
  await page.click("header form button");
  await login(page, "team", "team-password");
  assert.deepEqual(await texts(page, "#repositories tbody tr td:first-child"), ["team/app", "team/web"]);
  await page.fill("input[name=filter]", "web");
  await page.click("form.filter button");
  assert.deepEqual(await texts(page, "#repositories tbody tr td:first-child"), ["team/web"], "the filter");
  await page.goto(`${base}/ui/repository?name=team%2Fapp`);
  assert.equal(await page.$$eval("a.delete-tag", (d) => d.length), 0, "no delete without the grant");
  let resp = await page.goto(`${base}/ui/delete?name=team%2Fapp&tag=multi`);
  assert.equal(resp.status(), 403, "team may not delete");
  resp = await page.goto(`${base}/ui/manifest?name=other%2Fsecret&digest=${encodeURIComponent(env("SECRET"))}`);
  assert.equal(resp.status(), 404, "another user's repository is not shown");

  // Offline: every request the pages made went to the cluster's own nodes.
  const elsewhere = requests.filter((u) => !regionUrls.some((r) => u.startsWith(r)));
  assert.deepEqual(elsewhere, [], "requests to anywhere but the nodes");
  assert.deepEqual(problems, []);
  // The only refusals are the ones asked for: a wrong password, team's delete, another's
  // repository, and asia's refresh while it was down (none: the table comes from us).
  assert.deepEqual(refused, ["401 /ui/login", "403 /ui/delete", "404 /ui/manifest"]);
  await browser.close();
  console.log(JSON.stringify({ ok: true, requests: requests.length, region_down_seen_ms: seenIn }));
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
