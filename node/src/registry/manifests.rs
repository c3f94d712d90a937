//! Manifests, tags, the referrers API and the catalog. Manifest bytes are kept exactly as
//! pushed; GET and HEAD by tag or digest come from the manifest cache, or else one Postgres
//! round trip each.

use afreg_replication::{Applied, Command, EventOrigin};

use super::Registry;
use crate::hashing::Hasher;
use crate::oci::manifest::{self, OCI_INDEX};
use crate::oci::{Digest, ErrorCode, Reference, RegistryError, RepoName};
use crate::store::{ManifestRow, ReferrerRow};

/// What a successful manifest PUT reports.
pub struct PutManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// A page of names and whether more follow.
pub struct Page {
    pub items: Vec<String>,
    pub more: bool,
}

impl Registry {
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        r: &Reference,
        with_body: bool,
    ) -> Result<std::sync::Arc<ManifestRow>, RegistryError> {
        let miss = match self.manifests.get(repo, r) {
            Ok(row) => return Ok(row),
            Err(miss) => miss,
        };
        // A miss the cache will keep fetches the body even for HEAD: the next GET needs it.
        let row = self
            .store
            .manifest(repo, r, with_body || miss.is_some())
            .await?
            .ok_or_else(|| RegistryError::manifest_unknown(r))?;
        if let Some(miss) = miss {
            self.manifests.fill(miss, &row);
        }
        Ok(std::sync::Arc::new(row))
    }

    /// Checks and stores a manifest pushed under `reference`.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: &[u8],
        origin: EventOrigin,
    ) -> Result<PutManifest, RegistryError> {
        self.put_manifest_as(repo, reference, content_type, body, origin, false).await
    }

    /// [`Registry::put_manifest`]; a `mirrored` manifest (the pull-through cache's, fetched
    /// from its upstream) needs none of its blobs here yet: they are recorded as references
    /// not checked, and fetched on their first pull.
    pub(crate) async fn put_manifest_as(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: &[u8],
        origin: EventOrigin,
        mirrored: bool,
    ) -> Result<PutManifest, RegistryError> {
        let alg = match reference {
            Reference::Digest(d) => d.algorithm(),
            Reference::Tag(_) => crate::oci::Algorithm::Sha256,
        };
        let mut h = Hasher::new(alg);
        h.update(body);
        let digest = h.finish();
        if let Reference::Digest(d) = reference {
            if *d != digest {
                return Err(RegistryError::new(
                    ErrorCode::DigestInvalid,
                    format!("manifest pushed as {d} has digest {digest}"),
                ));
            }
        }
        let parsed = manifest::parse(body, content_type)?;
        let tag = match reference {
            Reference::Tag(t) => Some(t.as_str().to_owned()),
            Reference::Digest(_) => None,
        };
        let strings = |v: &[Digest]| v.iter().map(|d| d.to_string()).collect::<Vec<_>>();
        let cmd = Command::PutManifest {
            repo: repo.to_string(),
            digest: digest.to_string(),
            media_type: parsed.media_type.clone(),
            body: body.to_vec(),
            subject: parsed.subject.as_ref().map(|d| d.to_string()),
            artifact_type: parsed.artifact_type.clone(),
            annotations: parsed.annotations.clone(),
            blob_refs: if mirrored { vec![] } else { strings(&parsed.blobs) },
            foreign_refs: if mirrored {
                strings(&parsed.blobs).into_iter().chain(strings(&parsed.foreign_blobs)).collect()
            } else {
                strings(&parsed.foreign_blobs)
            },
            child_refs: strings(&parsed.children),
            tag,
            at: super::now_millis(),
        };
        if let Applied::MissingBlobs(missing) = self.replicate(super::with_origin(origin, cmd)).await? {
            return Err(RegistryError::new(
                ErrorCode::ManifestBlobUnknown,
                format!("manifest references blobs this repository does not have: {}", missing.join(", ")),
            ));
        }
        tracing::info!(event = "manifest_put", repository = %repo, digest = %digest, reference = %reference,
            size = body.len(), "manifest stored");
        Ok(PutManifest { digest, subject: parsed.subject })
    }

    /// Deletes a manifest by digest, or just a tag.
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        origin: EventOrigin,
    ) -> Result<(), RegistryError> {
        let cmd = match reference {
            Reference::Digest(d) => Command::DeleteManifest { repo: repo.to_string(), digest: d.to_string() },
            Reference::Tag(t) => Command::DeleteTag { repo: repo.to_string(), tag: t.as_str().to_owned() },
        };
        if self.replicate(super::with_origin(origin, cmd)).await? == Applied::NotFound {
            return Err(RegistryError::manifest_unknown(reference));
        }
        tracing::info!(event = "manifest_delete", repository = %repo, reference = %reference, "manifest deleted");
        Ok(())
    }

    pub async fn tags(&self, repo: &RepoName, n: Option<u32>, last: Option<&str>) -> Result<Page, RegistryError> {
        if n == Some(0) {
            // Still tell an unknown repository apart.
            self.store.tags(repo, Some(0), None).await?.ok_or_else(|| name_unknown(repo))?;
            return Ok(Page { items: vec![], more: false });
        }
        let mut items =
            self.store.tags(repo, n.map(|n| n as i64 + 1), last).await?.ok_or_else(|| name_unknown(repo))?;
        let more = n.is_some_and(|n| items.len() > n as usize);
        if let Some(n) = n {
            items.truncate(n as usize);
        }
        Ok(Page { items, more })
    }

    pub async fn catalog(&self, n: Option<u32>, last: Option<&str>) -> Result<Page, RegistryError> {
        if n == Some(0) {
            return Ok(Page { items: vec![], more: false });
        }
        let mut items = self.store.catalog(n.map(|n| n as i64 + 1), last).await?;
        let more = n.is_some_and(|n| items.len() > n as usize);
        if let Some(n) = n {
            items.truncate(n as usize);
        }
        Ok(Page { items, more })
    }

    /// The referrers index for `subject`, as an OCI image index body.
    /// One page of the referrers index (at most `n` descriptors, in digest order, after
    /// `last`), and the last digest on it when more follow.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
        n: u32,
        last: Option<&str>,
    ) -> Result<(Vec<u8>, Option<String>), RegistryError> {
        let mut rows = self.store.referrers(repo, subject, artifact_type, last, n as i64 + 1).await?;
        let more = rows.len() > n as usize;
        rows.truncate(n as usize);
        let manifests: Vec<serde_json::Value> = rows.iter().map(descriptor).collect();
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        Ok((serde_json::to_vec(&index).expect("json"), more.then(|| rows.last().map(|r| r.digest.clone())).flatten()))
    }
}

fn descriptor(r: &ReferrerRow) -> serde_json::Value {
    let mut d = serde_json::json!({"mediaType": r.media_type, "digest": r.digest, "size": r.size});
    if let Some(t) = &r.artifact_type {
        d["artifactType"] = t.clone().into();
    }
    if let Some(a) = r.annotations.as_ref().filter(|a| a.as_object().is_some_and(|o| !o.is_empty())) {
        d["annotations"] = a.clone();
    }
    d
}

fn name_unknown(repo: &RepoName) -> RegistryError {
    RegistryError::new(ErrorCode::NameUnknown, format!("repository {repo} is not known"))
}
