//! The manifest cache against a real node: manifests are served from memory between writes,
//! and never stale: a tag moved or a manifest deleted reads as such at once, even while other
//! clients keep reading (and refilling the cache) during the writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use testkit::oci::{self, get_manifest, new_image, push};
use testkit::{Action, TestRegion};

fn cache_hits(region: &TestRegion) -> f64 {
    let text = oci::client().get(region.node.metrics_url()).send().unwrap().text().unwrap();
    super::hostile::metric_value(&text, "afreg_manifest_cache_total", &["result=\"hit\""])
}

#[test]
fn manifests_come_from_memory_between_writes_and_a_write_is_read_at_once() {
    let region = TestRegion::start_with(testkit::afreg_bin(), |c| {
        // The readers below ask as fast as they can, from one address: the default limits
        // let reads through.
        c.config.auth.anonymous = Action::ALL.to_vec();
    });
    let (c, url) = (oci::client(), region.node.url());
    let first = new_image(1000);
    push(&c, &url, "cached/app", "latest", &first).unwrap();
    let before = cache_hits(&region);
    for _ in 0..5 {
        assert_eq!(get_manifest(&c, &url, "cached/app", "latest", ""), (200, first.manifest.clone()));
    }
    assert!(cache_hits(&region) - before >= 4.0, "repeated GETs of one tag are served from the cache");

    // Readers keep the tag's entry hot while it moves.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, url) = (stop.clone(), url.clone());
            std::thread::spawn(move || {
                let c = oci::client();
                while !stop.load(Ordering::Relaxed) {
                    let (status, _) = get_manifest(&c, &url, "cached/app", "latest", "");
                    assert_eq!(status, 200);
                }
            })
        })
        .collect();
    for round in 0..20 {
        let img = new_image(100);
        push(&c, &url, "cached/app", "latest", &img).unwrap();
        let (status, body) = get_manifest(&c, &url, "cached/app", "latest", "");
        assert_eq!(
            (status, body == img.manifest),
            (200, true),
            "round {round}: the tag moved before the push was acknowledged"
        );
        let r =
            c.head(format!("{url}/v2/cached/app/manifests/latest")).header("accept", oci::OCI_MANIFEST).send().unwrap();
        assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), img.digest, "round {round}: HEAD agrees");
    }
    stop.store(true, Ordering::Relaxed);
    readers.into_iter().for_each(|r| r.join().unwrap());

    // Deleted: gone by digest and by the tag that named it, at once.
    let (_, body) = get_manifest(&c, &url, "cached/app", "latest", "");
    let digest = testkit::sha256_digest(&body);
    assert_eq!(get_manifest(&c, &url, "cached/app", &digest, "").0, 200);
    let r = c.delete(format!("{url}/v2/cached/app/manifests/{digest}")).send().unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(
        get_manifest(&c, &url, "cached/app", &digest, "").0,
        404,
        "a deleted manifest is not served from memory"
    );
    assert_eq!(get_manifest(&c, &url, "cached/app", "latest", "").0, 404, "nor through its tag");
}
