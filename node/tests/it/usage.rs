//! Usage figures (`GET /v2/_afreg/usage`): each region counts the pulls it serves in its own
//! Postgres, off the pull's path, and the region asked adds up every region's figures, keeps
//! to the repositories the caller may pull, and names a region that did not answer.

use std::time::Duration;

use serde_json::Value;
use testkit::cluster::TestCluster;
use testkit::oci::{get_blob, get_manifest, push, within, Image};

use testkit::afreg_bin as bin;

const POLL: Duration = Duration::from_millis(200);
/// Pull counts are written once a second; the figures may trail the pulls by that.
const COUNTED: Duration = Duration::from_secs(15);

fn usage(url: &str, credentials: Option<(&str, &str)>, query: &str) -> (u16, Value) {
    let c = testkit::oci::client();
    let mut req = c.get(format!("{url}/v2/_afreg/usage{query}"));
    if let Some((user, password)) = credentials {
        req = req.basic_auth(user, Some(password));
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or_default())
}

fn repository<'a>(u: &'a Value, name: &str) -> Option<&'a Value> {
    u["repositories"].as_array().unwrap().iter().find(|r| r["repository"] == name)
}

fn region<'a>(u: &'a Value, name: &str) -> &'a Value {
    u["regions"].as_array().unwrap().iter().find(|r| r["region"] == name).unwrap()
}

fn pulls_in(u: &Value, region_name: &str, repo: &str) -> i64 {
    region(u, region_name)["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["repository"] == repo)
        .map_or(0, |r| r["pulls"].as_i64().unwrap())
}

fn stored_bytes(img: &Image) -> i64 {
    (img.blobs.iter().map(|(_, b)| b.len()).sum::<usize>() + img.manifest.len()) as i64
}

#[test]
fn usage_adds_every_regions_pulls_keeps_to_the_callers_grants_and_names_a_region_that_did_not_answer() {
    let mut cluster = TestCluster::start(bin(), &["us", "eu", "asia"], |_, c| c.config.auth.anonymous = vec![]);
    let us = cluster.region("us");
    us.node().add_user_with_grants("ops", "ops-password", &["*:pull,push,delete"]);
    us.node().add_user_with_grants("team", "team-password", &["team/*:pull"]);
    let ops = |region: &str, repo: &str| cluster.region(region).client_as("ops", "ops-password", repo);
    let (team_app, other_app) = (testkit::oci::new_image(40 * 1024), testkit::oci::new_image(8 * 1024));
    push(&ops("us", "team/app"), &us.url(), "team/app", "v1", &team_app).unwrap();
    push(&ops("us", "other/app"), &us.url(), "other/app", "v1", &other_app).unwrap();
    for r in &cluster.regions {
        within(Duration::from_secs(30), POLL, "both tags replicated", || r.sql("SELECT count(*) FROM tags") == "2");
    }

    // us: two pulls of team/app by tag, one of its layer and a HEAD (not a pull); eu: three
    // pulls by digest; asia: one pull of other/app.
    let layer = &team_app.blobs.iter().find(|(_, b)| b.len() == 40 * 1024).unwrap().0;
    let url = |r: &str| cluster.region(r).url();
    for _ in 0..2 {
        assert_eq!(get_manifest(&ops("us", "team/app"), &url("us"), "team/app", "v1", "").0, 200);
    }
    assert_eq!(get_blob(&ops("us", "team/app"), &url("us"), "team/app", layer).unwrap().0, 200);
    let head = ops("us", "team/app").head(format!("{}/v2/team/app/manifests/v1", url("us"))).send().unwrap();
    assert_eq!(head.status(), 200);
    for _ in 0..3 {
        assert_eq!(get_manifest(&ops("eu", "team/app"), &url("eu"), "team/app", &team_app.digest, "").0, 200);
    }
    assert_eq!(get_manifest(&ops("asia", "other/app"), &url("asia"), "other/app", "v1", "").0, 200);

    let ops_login = Some(("ops", "ops-password"));
    within(COUNTED, POLL, "every region's pulls counted", || {
        let (status, u) = usage(&url("us"), ops_login, "");
        status == 200
            && repository(&u, "team/app").is_some_and(|r| r["pulls"] == 5)
            && repository(&u, "other/app").is_some_and(|r| r["pulls"] == 1)
    });
    let (_, u) = usage(&url("us"), ops_login, "?days=7");
    let team = repository(&u, "team/app").unwrap();
    assert_eq!(team["blob_pulls"], 1, "{team}");
    let served = 5 * team_app.manifest.len() + 40 * 1024;
    assert_eq!(team["bytes_served"], served as i64, "{team}");
    assert_eq!(team["bytes_stored"], stored_bytes(&team_app), "{team}");
    assert_eq!(team["tags"], 1);
    assert!(team["last_pull"].is_string() && team["last_push"].is_string(), "{team}");
    assert_eq!((pulls_in(&u, "us", "team/app"), pulls_in(&u, "eu", "team/app")), (2, 3));
    assert_eq!(pulls_in(&u, "asia", "other/app"), 1);
    assert_eq!(u["unanswered"], serde_json::json!([]));
    // Per reference: the tag's pulls in us, the digest's in eu.
    let refs = region(&u, "us")["references"].as_array().unwrap();
    assert!(refs.iter().any(|r| r["tag"] == "v1" && r["digest"] == team_app.digest && r["pulls"] == 2), "{refs:?}");
    let days = region(&u, "eu")["days"].as_array().unwrap();
    assert_eq!(days.len(), 1, "one day of pulls in eu: {days:?}");
    assert_eq!(days[0]["pulls"], 3);

    // A user who may pull team/* sees team/app only, in the totals and in every region.
    let (status, mine) = usage(&url("eu"), Some(("team", "team-password")), "");
    assert_eq!(status, 200, "{mine}");
    assert!(repository(&mine, "team/app").is_some_and(|r| r["pulls"] == 5), "{mine}");
    assert!(repository(&mine, "other/app").is_none(), "other/app is not team's: {mine}");
    assert_eq!(pulls_in(&mine, "asia", "other/app"), 0, "{mine}");
    // No credentials and no anonymous access: a challenge; a bad password: refused.
    let (status, _) = usage(&url("us"), None, "");
    assert_eq!(status, 401);
    let (status, _) = usage(&url("us"), Some(("team", "wrong")), "");
    assert_eq!(status, 401);
    let (status, bad) = usage(&url("us"), ops_login, "?days=0");
    assert_eq!(status, 400, "{bad}");

    // asia down: its figures are missing, and the answer says so.
    let us_url = url("us");
    cluster.region_mut("asia").node_mut().kill();
    let (status, u) = usage(&us_url, ops_login, "");
    assert_eq!(status, 200, "{u}");
    assert_eq!(u["unanswered"], serde_json::json!(["asia"]));
    assert_eq!(region(&u, "asia")["answered"], false);
    assert!(region(&u, "asia")["error"].as_str().is_some_and(|e| !e.is_empty()), "{u}");
    assert_eq!(repository(&u, "team/app").unwrap()["pulls"], 5);
    assert_eq!(repository(&u, "other/app").unwrap()["pulls"], 0, "asia's pull is not counted without asia");
}
