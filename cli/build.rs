//! Names the git revision the binary is built from (`AFREG_REVISION`), for `afreg --version`
//! and the node's `afreg_build_info` (`afreg serve` hands it over): here, in the binary's own
//! small crate, so that a commit rebuilds only this crate, not the node's: `git rev-parse --short=12 HEAD`, or `unknown` where there is no git
//! (a source archive, the container build). Uncommitted changes are not marked: the script
//! runs again only when HEAD moves, so such a mark would go stale.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    let revision = git(&["rev-parse", "--short=12", "HEAD"]).filter(|r| !r.is_empty());
    let revision = revision.unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=AFREG_REVISION={revision}");
    // Built again when HEAD moves (a commit, a checkout), not on every build.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        let dir = std::path::Path::new(&dir);
        let head = std::fs::read_to_string(dir.join("HEAD")).unwrap_or_default();
        let branch = head.strip_prefix("ref: ").map(|r| dir.join(r.trim()));
        // Only files that exist: cargo runs the script every time for one that does not.
        for watched in [Some(dir.join("HEAD")), branch, Some(dir.join("packed-refs"))].into_iter().flatten() {
            if watched.exists() {
                println!("cargo:rerun-if-changed={}", watched.display());
            }
        }
    }
}
