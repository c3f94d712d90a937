//! The physical references, on the same bytes and the same machine as the registries: raw Kubo
//! `add` (the node's parameters, pinned), reading that file back through Kubo's gateway and
//! through its RPC `cat`, SHA-256 on one core, one loopback TCP stream, and a cached file piped
//! into this process. They say how far a registry figure is from what the hardware and the
//! store allow.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use reqwest::Client;
use sha2::Digest as _;
use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::{drain, mib_s};

/// `add` with the node's parameters (CIDv1, raw leaves, 1 MiB chunks) and `pin=true`; returns
/// (MiB/s, CID).
pub async fn kubo_add(c: &Client, api: &str, seed: u64, total: u64) -> Result<(f64, String)> {
    let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(testkit::stream::frames(seed, total)))
        .file_name("blob");
    let t = Instant::now();
    let r = c
        .post(format!("{api}/api/v0/add?cid-version=1&raw-leaves=true&chunker=size-1048576&pin=true&quieter=true"))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await?;
    ensure!(r.status().is_success(), "kubo add: {}", r.status());
    let text = r.text().await?;
    let took = t.elapsed();
    let last = text.lines().rfind(|l| !l.trim().is_empty()).context("kubo add: empty answer")?;
    let cid =
        serde_json::from_str::<serde_json::Value>(last)?["Hash"].as_str().context("kubo add: no Hash")?.to_owned();
    Ok((mib_s(total, took), cid))
}

/// Unpins `cid` on one of the bench's own Kubos and collects its garbage, so a long run
/// does not fill the disk.
pub async fn forget(c: &Client, kubo: &testkit::Kubo, cid: &str) -> Result<()> {
    let api = kubo.api_url();
    let r = c.post(format!("{api}/api/v0/pin/rm?arg={cid}")).send().await?;
    ensure!(r.status().is_success(), "kubo pin/rm: {}", r.status());
    collect_garbage(c, &api).await
}

/// Kubo's `repo/gc` on the Kubo at `api`: unpinned blocks leave its disk.
pub async fn collect_garbage(c: &Client, api: &str) -> Result<()> {
    let r = c.post(format!("{api}/api/v0/repo/gc?quiet=true")).send().await?;
    ensure!(r.status().is_success(), "kubo repo/gc: {}", r.status());
    drain(r).await?;
    Ok(())
}

/// `GET /ipfs/{cid}` on the gateway, MiB/s.
pub async fn gateway_read(c: &Client, gateway: &str, cid: &str, total: u64) -> Result<f64> {
    let t = Instant::now();
    let r = c.get(format!("{gateway}/ipfs/{cid}")).send().await?;
    ensure!(r.status().is_success(), "gateway GET: {}", r.status());
    let n = drain(r).await?;
    ensure!(n == total, "gateway GET: {n} bytes of {total}");
    Ok(mib_s(total, t.elapsed()))
}

/// `POST /api/v0/cat?arg={cid}`, MiB/s.
pub async fn rpc_cat(c: &Client, api: &str, cid: &str, total: u64) -> Result<f64> {
    let t = Instant::now();
    let r = c.post(format!("{api}/api/v0/cat?arg={cid}")).send().await?;
    ensure!(r.status().is_success(), "kubo cat: {}", r.status());
    let n = drain(r).await?;
    ensure!(n == total, "kubo cat: {n} bytes of {total}");
    Ok(mib_s(total, t.elapsed()))
}

/// SHA-256 of `total` bytes on one core, MiB/s (the bytes are generated first, untimed).
pub async fn sha256_one_core(total: u64) -> Result<f64> {
    tokio::task::spawn_blocking(move || {
        let buf = testkit::pseudo_random_frames(7, total.min(256 << 20), 1 << 20).flatten().collect::<Vec<u8>>();
        let t = Instant::now();
        let mut h = sha2::Sha256::new();
        let mut left = total;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        std::hint::black_box(h.finalize());
        mib_s(total, t.elapsed())
    })
    .await
    .context("sha256 task")
}

/// One TCP stream over loopback, 1 MiB writes, MiB/s.
pub async fn loopback_tcp(total: u64) -> Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = s.read(&mut buf).await?;
            if k == 0 {
                return Ok::<u64, std::io::Error>(n);
            }
            n += k as u64;
        }
    });
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut left = total;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..k]).await?;
        left -= k as u64;
    }
    s.shutdown().await?;
    let n = reader.await??;
    let took = t.elapsed();
    ensure!(n == total, "loopback: {n} of {total}");
    Ok(mib_s(total, took.max(Duration::from_nanos(1))))
}

/// Reading a file the page cache holds as a client receiving its bytes would pay for it:
/// `cat FILE` with its stdout piped into this process, which drains it, MiB/s. The file, of
/// `total` fresh bytes, is written and read once first, untimed, so it is cached: the bound on
/// a pull served from a cached file.
pub async fn page_cache_read(seed: u64, total: u64) -> Result<f64> {
    let file = tokio::task::spawn_blocking(move || {
        let mut file = tempfile::NamedTempFile::new()?;
        for frame in testkit::pseudo_random_frames(seed, total, 1 << 20) {
            file.write_all(&frame)?;
        }
        file.flush()?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .context("write the page-cache file")??;
    let warmed = cat_drained(file.path()).await?;
    ensure!(warmed == total, "cat {}: {warmed} bytes of {total}", file.path().display());
    let t = Instant::now();
    let n = cat_drained(file.path()).await?;
    let took = t.elapsed();
    ensure!(n == total, "cat {}: {n} bytes of {total}", file.path().display());
    Ok(mib_s(total, took))
}

/// Runs `cat PATH` and reads its stdout to the end; returns the bytes read.
async fn cat_drained(path: &Path) -> Result<u64> {
    let mut child = tokio::process::Command::new("cat")
        .arg(path)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawn cat")?;
    let mut out = child.stdout.take().context("cat: no stdout")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = out.read(&mut buf).await?;
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    let status = child.wait().await?;
    ensure!(status.success(), "cat {}: {status}", path.display());
    Ok(n)
}
