//! Blob files (`node/src/blob_files.rs`) against a real node: a pushed blob is served from its
//! verified file, ranges included, whether pushed in one request or a session's chunks; a truncated file is never served and an altered one is found
//! by the scrub; forty clients missing one blob fill it once; a small capacity evicts and pulls
//! go on; a delete removes the file; a node killed mid-fill serves nothing partial.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::blocking::Client;
use sha2::Digest as _;
use testkit::oci::within;
use testkit::{random_bytes, Action, NodeConfig, TestRegion};

fn region_with(f: impl FnOnce(&mut NodeConfig)) -> TestRegion {
    TestRegion::start_with(testkit::afreg_bin(), |c| {
        c.config.auth.anonymous = Action::ALL.to_vec();
        f(c);
    })
}

fn client() -> Client {
    Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap()
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// One `POST ?digest=` with the whole blob: the upload fills the file.
fn push_whole(c: &Client, url: &str, repo: &str, blob: &[u8]) -> String {
    let d = digest(blob);
    let r = c.post(format!("{url}/v2/{repo}/blobs/uploads/?digest={d}")).body(blob.to_vec()).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    d
}

/// `POST`, two `PATCH`es, `PUT`: the session fills the file across its requests.
fn push_chunked(c: &Client, url: &str, repo: &str, blob: &[u8]) -> String {
    let d = digest(blob);
    let r = c.post(format!("{url}/v2/{repo}/blobs/uploads/")).send().unwrap();
    assert_eq!(r.status(), 202);
    let mut loc = r.headers()["location"].to_str().unwrap().to_owned();
    let half = blob.len() / 2;
    for (start, part) in [(0, &blob[..half]), (half, &blob[half..])] {
        let r = c
            .patch(format!("{url}{loc}"))
            .header("content-range", format!("{start}-{}", start + part.len() - 1))
            .body(part.to_vec())
            .send()
            .unwrap();
        assert_eq!(r.status(), 202);
        loc = r.headers()["location"].to_str().unwrap().to_owned();
    }
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c.put(format!("{url}{loc}{sep}digest={d}")).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    d
}

fn pull(c: &Client, url: &str, repo: &str, d: &str) -> Vec<u8> {
    let r = c.get(format!("{url}/v2/{repo}/blobs/{d}")).send().unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().unwrap().to_vec()
}

fn files_dir(region: &TestRegion) -> PathBuf {
    region.node.dir().join("blob-files")
}

/// The blob's file, if it is in place.
fn file_of(region: &TestRegion, d: &str) -> Option<PathBuf> {
    let name = d.replace(':', "-");
    let mut found = None;
    walk(&files_dir(region), &mut |p| {
        if p.file_name().is_some_and(|n| n == name.as_str()) && !p.starts_with(files_dir(region).join("tmp")) {
            found = Some(p.to_owned());
        }
    });
    found
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, f);
        } else {
            f(&p);
        }
    }
}

fn temporary_files(region: &TestRegion) -> usize {
    std::fs::read_dir(files_dir(region).join("tmp")).map(|d| d.count()).unwrap_or(0)
}

fn figures(c: &Client, region: &TestRegion) -> serde_json::Value {
    let v: serde_json::Value =
        c.get(format!("{}/status?scope=local", region.node.url())).send().unwrap().json().unwrap();
    v["blob_files"].clone()
}

fn wait_for_file(region: &TestRegion, d: &str, size: u64) -> PathBuf {
    let mut path = None;
    within(Duration::from_secs(20), Duration::from_millis(50), "the blob's file in place", || {
        path = file_of(region, d).filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == size));
        path.is_some()
    });
    path.unwrap()
}

/// Waits for the file a push filled and removes it: the blob is then in Kubo only, as one
/// pinned here from another region is until its first pull.
fn make_cold(region: &TestRegion, d: &str, size: u64) {
    std::fs::remove_file(wait_for_file(region, d, size)).unwrap();
}

#[test]
fn a_pushed_blob_is_served_from_its_file_and_a_truncated_file_never() {
    let region = region_with(|_| {});
    let (c, url) = (client(), region.node.url());
    let blob = random_bytes(3 << 20);
    let d = push_whole(&c, &url, "files/a", &blob);
    let path = wait_for_file(&region, &d, blob.len() as u64);
    assert_eq!(std::fs::read(&path).unwrap(), blob, "the file holds the blob's bytes");
    assert_eq!(pull(&c, &url, "files/a", &d), blob);
    let r = c.get(format!("{url}/v2/files/a/blobs/{d}")).header("range", "bytes=1048570-1048589").send().unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().as_ref(), &blob[1048570..1048590]);
    let r = c.head(format!("{url}/v2/files/a/blobs/{d}")).send().unwrap();
    assert_eq!(r.headers()["content-length"], blob.len().to_string().as_str());
    let f = figures(&c, &region);
    assert!(f["hits"].as_u64().unwrap() >= 2, "{f}");
    assert_eq!(f["bytes"].as_u64(), Some(blob.len() as u64), "{f}");

    // POST then one PUT with the whole body fills too.
    let other = random_bytes(1 << 20);
    let d2 = digest(&other);
    let r = c.post(format!("{url}/v2/files/a/blobs/uploads/")).send().unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let sep = if loc.contains('?') { '&' } else { '?' };
    assert_eq!(c.put(format!("{url}{loc}{sep}digest={d2}")).body(other.clone()).send().unwrap().status(), 201);
    wait_for_file(&region, &d2, other.len() as u64);

    // Truncated on disk: not served; the pull comes from Kubo, whole, and fills the file again.
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(1 << 20).unwrap();
    assert_eq!(pull(&c, &url, "files/a", &d), blob);
    assert_eq!(figures(&c, &region)["corrupt"].as_u64(), Some(1));
    let again = wait_for_file(&region, &d, blob.len() as u64);
    assert_eq!(std::fs::read(again).unwrap(), blob);
}

#[test]
fn a_file_altered_in_place_is_found_by_the_scrub_and_not_served_after() {
    let region = region_with(|c| {
        c.config.storage.blob_cache_scrub_interval_secs = 1;
        c.config.storage.blob_cache_scrub_bytes_per_second = 64 << 20;
    });
    let (c, url) = (client(), region.node.url());
    let blob = random_bytes(2 << 20);
    let d = push_whole(&c, &url, "files/b", &blob);
    let path = wait_for_file(&region, &d, blob.len() as u64);
    let mut altered = blob.clone();
    altered[12345] ^= 0xff;
    std::fs::write(&path, &altered).unwrap();
    within(Duration::from_secs(20), Duration::from_millis(100), "the scrub removing the altered file", || {
        figures(&c, &region)["corrupt"].as_u64() == Some(1)
    });
    assert!(std::fs::read(&path).map(|b| b != altered).unwrap_or(true), "the altered file is gone");
    assert_eq!(pull(&c, &url, "files/b", &d), blob, "the pull after the scrub is right");
}

#[test]
fn forty_clients_missing_one_blob_fill_its_file_once() {
    let region = region_with(|_| {});
    let (c, url) = (client(), region.node.url());
    let blob = random_bytes(8 << 20);
    let d = push_chunked(&c, &url, "files/c", &blob);
    make_cold(&region, &d, blob.len() as u64);
    let barrier = std::sync::Barrier::new(40);
    std::thread::scope(|s| {
        for _ in 0..40 {
            s.spawn(|| {
                let c = client();
                barrier.wait();
                assert!(pull(&c, &url, "files/c", &d) == blob, "a client got wrong bytes");
            });
        }
    });
    wait_for_file(&region, &d, blob.len() as u64);
    let f = figures(&c, &region);
    assert_eq!(f["fills"].as_u64(), Some(2), "the push's fill and one pull's: {f}");
    assert_eq!(temporary_files(&region), 0);
}

#[test]
fn a_small_capacity_evicts_the_least_recently_used_and_pulls_go_on() {
    let region = region_with(|c| c.config.storage.blob_cache_bytes = 3 << 20);
    let (c, url) = (client(), region.node.url());
    let blobs: Vec<Vec<u8>> = (0..5).map(|_| random_bytes(1 << 20)).collect();
    let mut digests = vec![];
    for b in &blobs {
        let d = push_whole(&c, &url, "files/d", b);
        wait_for_file(&region, &d, b.len() as u64);
        digests.push(d);
    }
    for _ in 0..2 {
        for (b, d) in blobs.iter().zip(&digests) {
            assert!(pull(&c, &url, "files/d", d) == *b);
        }
    }
    let f = figures(&c, &region);
    assert!(f["bytes"].as_u64().unwrap() <= 3 << 20, "{f}");
    assert!(f["evictions"].as_u64().unwrap() >= 2, "{f}");
    let on_disk = digests.iter().filter(|d| file_of(&region, d).is_some()).count();
    assert!(on_disk <= 3, "{on_disk} files on disk past a capacity of three");
}

#[test]
fn deleting_a_blob_removes_its_file() {
    let region = region_with(|_| {});
    let (c, url) = (client(), region.node.url());
    let blob = random_bytes(1 << 20);
    let d = push_whole(&c, &url, "files/e", &blob);
    let path = wait_for_file(&region, &d, blob.len() as u64);
    assert_eq!(c.delete(format!("{url}/v2/files/e/blobs/{d}")).send().unwrap().status(), 202);
    within(Duration::from_secs(20), Duration::from_millis(50), "the deleted blob's file removed", || !path.exists());
    assert_eq!(c.get(format!("{url}/v2/files/e/blobs/{d}")).send().unwrap().status(), 404);
}

#[test]
fn a_node_killed_mid_fill_serves_nothing_partial() {
    let mut region = region_with(|_| {});
    let (c, url) = (client(), region.node.url());
    let blob = random_bytes(64 << 20);
    let d = push_chunked(&c, &url, "files/f", &blob);
    make_cold(&region, &d, blob.len() as u64);
    // A pull that reads 2 MiB and stalls: its fill has begun and cannot finish.
    let mut r = c.get(format!("{url}/v2/files/f/blobs/{d}")).send().unwrap();
    let mut first = vec![0u8; 2 << 20];
    r.read_exact(&mut first).unwrap();
    within(Duration::from_secs(10), Duration::from_millis(20), "a fill under way", || temporary_files(&region) == 1);
    region.node.kill();
    drop(r);
    assert!(file_of(&region, &d).is_none(), "nothing partial in place");
    region.node.spawn_again();
    region.node.wait_healthy(Duration::from_secs(30)).unwrap();
    assert_eq!(temporary_files(&region), 0, "the dead fill's temporary file is removed at start");
    assert!(file_of(&region, &d).is_none());
    assert!(pull(&c, &url, "files/f", &d) == blob);
    let path = wait_for_file(&region, &d, blob.len() as u64);
    assert!(std::fs::read(path).unwrap() == blob);
}
