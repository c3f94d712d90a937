//! The crane workloads: a real client pushing and pulling a whole image, with its own
//! concurrency across layers and its own token flow, where the other workloads move one blob
//! at a time. The bench writes an OCI image layout (twenty layers of fresh bytes from 256 KiB to
//! 4 MiB, a config and a manifest) and times `crane push LAYOUT REF`, then `crane pull REF DIR
//! --format oci` of the same reference, each round into a repository of its own.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use sha2::Digest as _;

use crate::http::OCI_MANIFEST;
use crate::targets::Target;

/// Layers of the image.
pub const LAYERS: usize = 20;
const SMALLEST_LAYER: u64 = 256 << 10;
const BIGGEST_LAYER: u64 = 4 << 20;
/// A crane process still running after this long is killed and the workload fails.
const CRANE_TIMEOUT: Duration = Duration::from_secs(300);
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// The name of a crane workload: `crane-push/20-layers`, `crane-pull/20-layers`.
pub fn workload(verb: &str) -> String {
    format!("crane-{verb}/{LAYERS}-layers")
}

/// The layers' sizes: a geometric spread from 256 KiB to 4 MiB, each a whole KiB, the same for
/// every seed (the seed changes the bytes only), so every round and target moves the same
/// amount in the same shape.
pub fn layer_sizes() -> Vec<u64> {
    let ratio = (BIGGEST_LAYER as f64 / SMALLEST_LAYER as f64).powf(1.0 / (LAYERS - 1) as f64);
    (0..LAYERS).map(|i| (SMALLEST_LAYER as f64 * ratio.powi(i as i32) / 1024.0).round() as u64 * 1024).collect()
}

/// An image the bench wrote as an OCI layout.
pub struct Image {
    /// Digest and size of every blob: the layers, then the config.
    pub blobs: Vec<(String, u64)>,
    pub manifest_digest: String,
    /// The bytes of the layers, the config and the manifest: what a push or a pull moves.
    pub bytes: u64,
}

/// Writes `blobs/sha256/HEX` for `data` under `layout`; returns its digest and size.
fn write_blob(layout: &Path, data: &[u8]) -> Result<(String, u64)> {
    let hex = hex::encode(sha2::Sha256::digest(data));
    let path = layout.join("blobs/sha256").join(&hex);
    std::fs::write(&path, data).with_context(|| format!("write {}", path.display()))?;
    Ok((format!("sha256:{hex}"), data.len() as u64))
}

/// Writes an OCI image layout into `layout` (an empty directory): `oci-layout`, `index.json`
/// naming one manifest, and the blobs of [`LAYERS`] layers of fresh bytes from `seed` (sizes of
/// [`layer_sizes`]), their config and the manifest. The layers are typed as uncompressed tars
/// and listed as their own diff ids; no client opens them.
pub fn write_layout(layout: &Path, seed: u64) -> Result<Image> {
    std::fs::create_dir_all(layout.join("blobs/sha256"))?;
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut layers = vec![];
    for (i, size) in layer_sizes().into_iter().enumerate() {
        let seed = seed.wrapping_mul(LAYERS as u64 + 1).wrapping_add(i as u64);
        let data: Vec<u8> = testkit::pseudo_random_frames(seed, size, testkit::stream::FRAME).flatten().collect();
        layers.push(write_blob(layout, &data)?);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(d, _)| d).collect::<Vec<_>>()},
    }))?;
    let (config_digest, config_size) = write_blob(layout, &config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_size},
        "layers": layers.iter().map(|(d, size)| serde_json::json!({"mediaType": LAYER_MEDIA_TYPE, "digest": d, "size": size})).collect::<Vec<_>>(),
    }))?;
    let (manifest_digest, manifest_size) = write_blob(layout, &manifest)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest_size}],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    let mut blobs = layers;
    blobs.push((config_digest, config_size));
    let bytes = blobs.iter().map(|(_, size)| size).sum::<u64>() + manifest_size;
    Ok(Image { blobs, manifest_digest, bytes })
}

/// `repo:tag` on `t` as crane names it (host and port, no scheme).
pub fn reference(t: &Target, repo: &str, tag: &str) -> String {
    let host = t.url.trim_start_matches("http://").trim_start_matches("https://");
    format!("{host}/{repo}:{tag}")
}

/// Times `crane push LAYOUT REFERENCE` to `t`.
pub async fn push(t: &Target, layout: &Path, reference: &str) -> Result<Duration> {
    crane(t, &["push".as_ref(), layout.as_os_str(), reference.as_ref()]).await
}

/// Times `crane pull REFERENCE INTO --format oci` from `t`, then checks that every blob of
/// `image` is in the layout it wrote, at its size.
pub async fn pull(t: &Target, reference: &str, into: &Path, image: &Image) -> Result<Duration> {
    let took =
        crane(t, &["pull".as_ref(), "--format".as_ref(), "oci".as_ref(), reference.as_ref(), into.as_os_str()]).await?;
    let size_of = |digest: &str| {
        let path = into.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
        std::fs::metadata(&path).with_context(|| format!("crane pull {reference}: no {digest}")).map(|m| m.len())
    };
    size_of(&image.manifest_digest)?;
    for (digest, size) in &image.blobs {
        let len = size_of(digest)?;
        ensure!(len == *size, "crane pull {reference}: {digest} is {len} bytes, not {size}");
    }
    Ok(took)
}

/// Runs crane with `args` and `--insecure` (plain http) against `t`, logged in through a
/// `DOCKER_CONFIG` of its own; returns how long it took.
async fn crane(t: &Target, args: &[&OsStr]) -> Result<Duration> {
    let config = tempfile::tempdir()?;
    std::fs::write(config.path().join("config.json"), docker_config(t)?)?;
    let mut cmd = tokio::process::Command::new(testkit::tool("crane"));
    cmd.args(args)
        .arg("--insecure")
        .env("DOCKER_CONFIG", config.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(CRANE_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("crane {args:?}: still running after {CRANE_TIMEOUT:?}, killed"))?
        .context("run crane")?;
    let took = started.elapsed();
    ensure!(out.status.success(), "crane {args:?}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    Ok(took)
}

/// crane's `config.json`: the bench user's credentials for `t`'s host where it has a login,
/// none otherwise (so no login of the machine's own is used).
fn docker_config(t: &Target) -> Result<Vec<u8>> {
    let mut auths = serde_json::Map::new();
    if let Some((user, password)) = &t.login {
        let host = t.url.trim_start_matches("http://").trim_start_matches("https://");
        auths.insert(host.to_owned(), serde_json::json!({"auth": base64(format!("{user}:{password}").as_bytes())}));
    }
    Ok(serde_json::to_vec(&serde_json::json!({ "auths": auths }))?)
}

/// Standard base64 with padding (RFC 4648), for `config.json`'s `auth`.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            // A chunk of k bytes gives k + 1 characters; `=` pads the rest.
            out.push(if i <= chunk.len() { ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_spread_geometrically_from_256_kib_to_4_mib() {
        let sizes = layer_sizes();
        assert_eq!(sizes.len(), LAYERS);
        assert_eq!((sizes[0], sizes[LAYERS - 1]), (256 << 10, 4 << 20));
        assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
        assert!(sizes.iter().all(|s| s % 1024 == 0), "{sizes:?}");
        // Geometric: every step the same ratio, to rounding.
        let ratios: Vec<f64> = sizes.windows(2).map(|w| w[1] as f64 / w[0] as f64).collect();
        assert!(ratios.iter().all(|r| (r - ratios[0]).abs() < 0.01), "{ratios:?}");
    }

    #[test]
    fn the_layout_names_its_manifest_and_every_blob_by_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let image = write_layout(dir.path(), 7).unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"], image.manifest_digest.as_str());
        let blob = |d: &str| std::fs::read(dir.path().join("blobs/sha256").join(d.trim_start_matches("sha256:")));
        let manifest: serde_json::Value = serde_json::from_slice(&blob(&image.manifest_digest).unwrap()).unwrap();
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), LAYERS);
        assert_eq!(image.blobs.len(), LAYERS + 1);
        for (digest, size) in &image.blobs {
            let data = blob(digest).unwrap();
            assert_eq!(data.len() as u64, *size);
            assert_eq!(format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data))), *digest);
        }
        assert_eq!(manifest["config"]["digest"], image.blobs[LAYERS].0.as_str());
        let files: u64 = std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(files, image.bytes);
        // Another seed, other bytes, the same sizes.
        let other = tempfile::tempdir().unwrap();
        let again = write_layout(other.path(), 8).unwrap();
        assert_ne!(again.blobs[0].0, image.blobs[0].0);
        assert_eq!(again.blobs[0].1, image.blobs[0].1);
    }

    #[test]
    fn base64_is_rfc_4648s() {
        for (plain, encoded) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(b"bench:\xff\xfe"), "YmVuY2g6//4=");
    }

    #[test]
    fn only_a_target_with_a_login_gets_credentials() {
        let mut t = Target::at("afreg-defaults", "http://127.0.0.1:5000".into());
        let none: serde_json::Value = serde_json::from_slice(&docker_config(&t).unwrap()).unwrap();
        assert_eq!(none, serde_json::json!({"auths": {}}));
        t.login = Some(("bench".into(), "pw".into()));
        let some: serde_json::Value = serde_json::from_slice(&docker_config(&t).unwrap()).unwrap();
        assert_eq!(some["auths"]["127.0.0.1:5000"]["auth"], "YmVuY2g6cHc=");
        assert_eq!(reference(&t, "bench/crane-0", "latest"), "127.0.0.1:5000/bench/crane-0:latest");
    }
}
