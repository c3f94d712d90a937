// The web console in a real browser: Debian's Chromium driven by playwright-core (no browser
// download; scripts/setup.sh installs both). Run by node/tests/it/console.rs, which starts the
// cluster, pushes the images and passes what it pushed in the environment:
//
//   CONSOLE_URL   the us region's public URL          PULL_HOST  its host:port
//   V1_DIGEST     team/app:v1's manifest digest        V1_LAYERS  its layer count
//   SBOM_TYPE     the artifact type of v1's referrer   SECRET     other/secret:v1's digest
//   V1_PULLS      pulls of team/app:v1 counted in every region
//
// It exits non-zero at the first check that fails, saying which; on success it prints one
// JSON line of what it saw.
"use strict";

const assert = require("node:assert/strict");
const { chromium } = require("playwright-core");

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const base = env("CONSOLE_URL").replace(/\/$/, "");
const v1 = env("V1_DIGEST");

async function login(page, user, password) {
  await page.goto(`${base}/ui/login`);
  await page.fill("input[name=username]", user);
  await page.fill("input[name=password]", password);
  await page.click("button[type=submit]");
}

async function main() {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  const context = await browser.newContext();
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  const page = await context.newPage();
  const requests = [];
  const problems = [];
  page.on("request", (r) => requests.push(r.url()));
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  // A refused request is also logged by the browser; those are checked as responses below.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(`console error: ${m.text()}`);
  });
  const refused = [];
  page.on("response", (r) => { if (r.status() >= 400) refused.push(`${r.status()} ${new URL(r.url()).pathname}`); });

  // Signed out, with no anonymous access: the login page.
  await page.goto(`${base}/ui/`);
  assert.match(page.url(), /\/ui\/login$/, "a signed-out visitor is sent to the login page");
  await login(page, "team", "not-the-password");
  assert.match(await page.textContent("#login-error"), /invalid username or password/);

  // A user who may pull team/* sees team/app, never other/secret.
  await login(page, "team", "team-password");
  assert.match(page.url(), /\/ui\/repositories$/);
  assert.equal(await page.textContent("#user"), "team");
  const listed = await page.$$eval("#repositories tbody tr td:first-child", (tds) => tds.map((t) => t.textContent));
  assert.deepEqual(listed, ["team/app"], "team's repositories");
  await page.fill("input[name=filter]", "nothing-like-it");
  await page.click("form.filter button");
  assert.equal(await page.$$eval("#repositories tbody tr", (r) => r.length), 0, "the filter hides what does not match");
  await page.fill("input[name=filter]", "app");
  await page.click("form.filter button");
  const pulls7 = await page.textContent("#repositories tbody tr td.pulls");
  assert.equal(Number(pulls7), Number(env("V1_PULLS")), "pulls over 7 days, from every region");

  // The repository: its tags, platforms, referrers, pull counts and pull command.
  await page.click("text=team/app");
  assert.match(page.url(), /\/ui\/repository\?name=team%2Fapp$/);
  const row = (tag) => `#tags tr[data-tag="${tag}"]`;
  assert.match(await page.textContent(`${row("multi")} td.platforms`), /linux\/amd64, linux\/arm64\/v8/);
  assert.match(await page.textContent(`${row("v1")} td.platforms`), /single/);
  assert.match(await page.textContent(`${row("v1")} ul.referrers`), new RegExp(env("SBOM_TYPE").replace(/[+.]/g, "\\$&")));
  assert.equal(Number(await page.textContent(`${row("v1")} td.pulls`)), Number(env("V1_PULLS")));
  const pull = `docker pull ${env("PULL_HOST")}/team/app:v1`;
  assert.equal(await page.textContent(`${row("v1")} code.pull`), pull);
  await page.click(`${row("v1")} button.copy`);
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), pull, "the pull command is copied");
  assert.equal(await page.$$eval("#delete", (d) => d.length), 0);

  // A manifest: its config and layers; team may not delete it.
  await page.click(`${row("v1")} td:nth-child(2) a`);
  assert.equal(await page.textContent("#digest"), v1);
  assert.equal(await page.$$eval("#layers tbody tr", (r) => r.length), Number(env("V1_LAYERS")));
  assert.ok((await page.textContent("#config")).startsWith("sha256:"));
  assert.equal(await page.$$eval("#delete", (d) => d.length), 0, "no delete button without the grant");
  let resp = await page.goto(`${base}/ui/delete?name=team%2Fapp&digest=${encodeURIComponent(v1)}`);
  assert.equal(resp.status(), 403, "team may not delete");
  resp = await page.goto(`${base}/ui/manifest?name=other%2Fsecret&digest=${encodeURIComponent(env("SECRET"))}`);
  assert.equal(resp.status(), 404, "another user's repository is not shown");

  // The cluster, refreshed live.
  await page.goto(`${base}/ui/cluster`);
  assert.deepEqual(await page.$$eval("#regions tbody tr", (r) => r.map((x) => x.dataset.region)).then((r) => r.sort()),
    ["asia", "eu", "us"]);
  await page.waitForSelector("#cluster[data-refreshed]", { timeout: 10000 });
  const roles = await page.$$eval("#regions td.role", (r) => r.map((x) => x.textContent));
  assert.equal(roles.filter((r) => r === "leader").length, 1, `one leader: ${roles}`);

  // Usage: the charts, and the top repositories.
  await page.goto(`${base}/ui/usage`);
  assert.equal(await page.$$eval("figure.chart svg", (s) => s.length), 2);
  assert.ok(await page.$$eval("figure.chart rect.bar", (r) => r.filter((x) => Number(x.getAttribute("height")) > 0).length) > 0,
    "some bars have pulls");
  assert.deepEqual(await page.$$eval("#top tbody td:first-child", (t) => t.map((x) => x.textContent)), ["team/app"]);

  // ops holds delete: the manifest goes, after a confirmation.
  await page.click("header form button");
  assert.match(page.url(), /\/ui\/login$/);
  await login(page, "ops", "ops-password");
  const all = await page.$$eval("#repositories tbody tr td:first-child", (tds) => tds.map((t) => t.textContent));
  assert.deepEqual(all, ["other/secret", "team/app"]);
  await page.goto(`${base}/ui/manifest?name=team%2Fapp&digest=${encodeURIComponent(v1)}`);
  await page.click("#delete");
  assert.match(await page.textContent("main"), /cannot be undone/);
  await page.click("#confirm");
  assert.match(await page.textContent("#deleted"), new RegExp(v1.replace(":", "\\:")));
  assert.equal(await page.$$eval(row("v1"), (r) => r.length), 0, "the tag went with its manifest");

  // Offline: every request the pages made went to the node itself.
  const elsewhere = requests.filter((u) => !u.startsWith(base));
  assert.deepEqual(elsewhere, [], "requests to anywhere but the node");
  assert.deepEqual(problems, []);
  // The only refusals are the ones asked for: a wrong password, team's delete, another's repository.
  assert.deepEqual(refused, ["401 /ui/login", "403 /ui/delete", "404 /ui/manifest"]);
  await browser.close();
  console.log(JSON.stringify({ ok: true, requests: requests.length }));
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
