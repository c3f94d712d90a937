// A browser UI on another origin (what joxit's docker-registry-ui does): from a page served by
// ALLOWED_ORIGIN, fetch a token with Basic credentials, then the catalog, a tag list and a
// manifest's digest with it, each a cross-origin request with a preflight; and from a page of
// OTHER_ORIGIN, which the registry does not list, the browser must refuse to read anything.
//
//   REGISTRY, ALLOWED_ORIGIN, OTHER_ORIGIN, USER, PASSWORD, DIGEST (team/app:v1's)
"use strict";

const assert = require("node:assert/strict");
const { launch, env } = require("./browser.cjs");


// Runs in the UI's page.
async function browse({ registry, user, password }) {
  const basic = "Basic " + btoa(`${user}:${password}`);
  const t = await fetch(`${registry}/token?service=afreg&scope=registry:catalog:*&scope=repository:team/app:pull`,
    { headers: { Authorization: basic } });
  const token = (await t.json()).token;
  const bearer = { Authorization: `Bearer ${token}` };
  const catalog = await (await fetch(`${registry}/v2/_catalog?n=100`, { headers: bearer })).json();
  const tags = await (await fetch(`${registry}/v2/team/app/tags/list`, { headers: bearer })).json();
  const head = await fetch(`${registry}/v2/team/app/manifests/v1`, {
    method: "HEAD",
    headers: { ...bearer, Accept: "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json" },
  });
  const anonymous = await fetch(`${registry}/v2/_catalog`);
  return {
    tokenStatus: t.status, catalog, tags, headStatus: head.status, digest: head.headers.get("docker-content-digest"),
    anonymousStatus: anonymous.status, challenge: anonymous.headers.get("www-authenticate"),
  };
}

async function main() {
  const browser = await launch();
  const page = await browser.newPage();
  const args = { registry: env("REGISTRY"), user: env("USER"), password: env("PASSWORD") };

  await page.goto(`${env("ALLOWED_ORIGIN")}/index.html`);
  const got = await page.evaluate(browse, args);
  assert.equal(got.tokenStatus, 200);
  assert.deepEqual(got.catalog.repositories, ["team/app"]);
  assert.deepEqual(got.tags.tags, ["v1"]);
  assert.equal(got.headStatus, 200);
  assert.equal(got.digest, env("DIGEST"), "Docker-Content-Digest is exposed to the page");
  assert.equal(got.anonymousStatus, 401);
  assert.match(got.challenge || "", /^Bearer realm=/, "WWW-Authenticate is exposed to the page");

  await page.goto(`${env("OTHER_ORIGIN")}/index.html`);
  const refused = await page.evaluate(async ({ registry }) => {
    try {
      await fetch(`${registry}/v2/_catalog`, { headers: { Authorization: "Basic eDp5" } });
      return "read";
    } catch (e) {
      return `refused: ${e.name}`;
    }
  }, args);
  assert.equal(refused, "refused: TypeError", "an origin not listed cannot read the registry");
  await browser.close();
  console.log(JSON.stringify({ ok: true }));
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
