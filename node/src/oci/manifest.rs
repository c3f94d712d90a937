//! Reads a pushed manifest just enough to store it: which blobs and child manifests it
//! references, its subject and artifact type (for the referrers API) and its annotations.
//! The bytes themselves are stored and served exactly as pushed.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use super::error::{ErrorCode, RegistryError};
use super::names::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What a manifest says about the content it ties together.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedManifest {
    /// The media type it is stored and served with.
    pub media_type: String,
    /// Config and layers that must be present in the repository.
    pub blobs: Vec<Digest>,
    /// Layers that need not be present (non-distributable, with `urls`).
    pub foreign_blobs: Vec<Digest>,
    /// Manifests an index points at.
    pub children: Vec<Digest>,
    pub subject: Option<Digest>,
    /// `artifactType`, or for an image manifest without one, its config's media type.
    pub artifact_type: Option<String>,
    pub annotations: Option<serde_json::Value>,
}

fn invalid(why: impl std::fmt::Display) -> RegistryError {
    RegistryError::new(ErrorCode::ManifestInvalid, format!("invalid manifest: {why}"))
}

fn digest_of(d: &Descriptor) -> Result<Digest, RegistryError> {
    d.digest().to_string().parse().map_err(|e: RegistryError| invalid(e.message))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Image,
    Index,
}

fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Image),
        OCI_INDEX | DOCKER_LIST => Some(Kind::Index),
        _ => None,
    }
}

/// The `Content-Type` a stored manifest is served with: its media type if it is a manifest
/// media type, else `application/octet-stream` (a row stored before the media type was
/// checked must not reach a browser as what it claimed).
pub fn served_type(media_type: &str) -> &str {
    if kind_of(media_type).is_some() {
        media_type
    } else {
        "application/octet-stream"
    }
}

/// Parses `body`, pushed with the `Content-Type` `content_type` (if any).
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, RegistryError> {
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<i64>,
        manifests: Option<serde::de::IgnoredAny>,
        config: Option<serde::de::IgnoredAny>,
    }
    // JSON text is UTF-8 (RFC 8259 section 8.1), and serde_json does not check the strings it
    // skips (unknown fields), so a body with other bytes there would be stored as JSON.
    let text =
        std::str::from_utf8(body).map_err(|e| invalid(format!("not valid JSON: not UTF-8: {e}")).with_source(e))?;
    let peek: Peek = serde_json::from_str(text).map_err(|e| invalid(format!("not valid JSON: {e}")).with_source(e))?;
    if peek.schema_version != Some(2) {
        return Err(invalid("schemaVersion must be 2"));
    }
    let header = content_type.map(|c| c.split(';').next().unwrap_or("").trim()).filter(|c| !c.is_empty());
    if let (Some(h), Some(b)) = (header, peek.media_type.as_deref()) {
        if h != b {
            return Err(invalid(format!("Content-Type {h} does not match the manifest's mediaType {b}")));
        }
    }
    let media_type = header.or(peek.media_type.as_deref()).map(str::to_owned);
    let kind = match media_type.as_deref().and_then(kind_of) {
        Some(k) => k,
        None if media_type.is_some() && header.is_some() && peek.media_type.is_none() => {
            // An unknown Content-Type on a manifest without mediaType: go by its shape, and
            // keep the shape's media type, never the pushed one, which is what the manifest is
            // served as (a `text/html` one would be a page on the registry's origin).
            let kind = shape(&peek.manifests, &peek.config)?;
            let media_type = if kind == Kind::Index { OCI_INDEX } else { OCI_MANIFEST };
            return parse(body, Some(media_type));
        }
        None if media_type.is_some() => {
            return Err(RegistryError::new(
                ErrorCode::ManifestInvalid,
                format!("unsupported manifest media type {}", media_type.unwrap_or_default()),
            ))
        }
        None => shape(&peek.manifests, &peek.config)?,
    };
    let media_type = media_type.unwrap_or_else(|| if kind == Kind::Index { OCI_INDEX } else { OCI_MANIFEST }.into());

    match kind {
        Kind::Image => {
            let m: ImageManifest = serde_json::from_slice(body).map_err(|e| invalid(&e).with_source(e))?;
            let mut blobs = vec![digest_of(m.config())?];
            let mut foreign = vec![];
            for l in m.layers() {
                let d = digest_of(l)?;
                if l.urls().as_ref().is_some_and(|u| !u.is_empty()) {
                    foreign.push(d);
                } else {
                    blobs.push(d);
                }
            }
            let artifact_type =
                m.artifact_type().as_ref().map(|t| t.to_string()).or_else(|| Some(m.config().media_type().to_string()));
            Ok(ParsedManifest {
                media_type,
                blobs,
                foreign_blobs: foreign,
                children: vec![],
                subject: m.subject().as_ref().map(digest_of).transpose()?,
                artifact_type,
                annotations: m.annotations().as_ref().map(|a| serde_json::to_value(a).unwrap_or_default()),
            })
        }
        Kind::Index => {
            let m: ImageIndex = serde_json::from_slice(body).map_err(|e| invalid(&e).with_source(e))?;
            Ok(ParsedManifest {
                media_type,
                blobs: vec![],
                foreign_blobs: vec![],
                children: m.manifests().iter().map(digest_of).collect::<Result<_, _>>()?,
                subject: m.subject().as_ref().map(digest_of).transpose()?,
                artifact_type: m.artifact_type().as_ref().map(|t| t.to_string()),
                annotations: m.annotations().as_ref().map(|a| serde_json::to_value(a).unwrap_or_default()),
            })
        }
    }
}

fn shape(
    manifests: &Option<serde::de::IgnoredAny>,
    config: &Option<serde::de::IgnoredAny>,
) -> Result<Kind, RegistryError> {
    match (manifests.is_some(), config.is_some()) {
        (true, false) => Ok(Kind::Index),
        (false, true) => Ok(Kind::Image),
        _ => Err(invalid("neither an image manifest nor an index")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dg(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifest_with_subject() {
        let body = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.example+json", "digest": dg('a'), "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": dg('b'), "size": 3},
                       {"mediaType": "application/octet-stream", "digest": dg('c'), "size": 3, "urls": ["http://x"]}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": dg('d'), "size": 9},
            "annotations": {"k": "v"}
        });
        let p = parse(&serde_json::to_vec(&body).unwrap(), Some(OCI_MANIFEST)).unwrap();
        assert_eq!(p.blobs.iter().map(|d| d.to_string()).collect::<Vec<_>>(), vec![dg('a'), dg('b')]);
        assert_eq!(p.foreign_blobs.len(), 1);
        assert_eq!(p.subject.unwrap().to_string(), dg('d'));
        assert_eq!(p.artifact_type.as_deref(), Some("application/vnd.example+json"));
        assert_eq!(p.annotations.unwrap()["k"], "v");
    }

    #[test]
    fn docker_list_is_an_index() {
        let body = serde_json::json!({"schemaVersion": 2, "mediaType": DOCKER_LIST,
            "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": dg('e'), "size": 5,
                           "platform": {"architecture": "amd64", "os": "linux"}}]});
        let p = parse(&serde_json::to_vec(&body).unwrap(), Some(DOCKER_LIST)).unwrap();
        assert_eq!(p.children.len(), 1);
        assert!(p.blobs.is_empty());
    }

    #[test]
    fn rejects_bytes_that_are_not_utf8_even_where_unread() {
        // Found by fuzz/ (target manifest): the invalid bytes sit in a field nothing reads.
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","x":"?","config":{{"mediaType":"a/b","digest":"{}","size":2}},"layers":[]}}"#,
            dg('a')
        );
        let mut body = body.into_bytes();
        let at = body.iter().position(|&b| b == b'?').unwrap();
        body[at] = 0xff;
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_err(), "the fixture is not JSON");
        let e = parse(&body, Some(OCI_MANIFEST)).unwrap_err();
        assert_eq!(e.code, ErrorCode::ManifestInvalid);
        assert!(e.message.contains("not UTF-8"), "{}", e.message);
    }

    #[test]
    fn rejects_invalid() {
        assert_eq!(parse(b"{not json", None).unwrap_err().code, ErrorCode::ManifestInvalid);
        assert_eq!(parse(b"{\"schemaVersion\":1}", None).unwrap_err().code, ErrorCode::ManifestInvalid);
        let body = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []});
        let e = parse(&serde_json::to_vec(&body).unwrap(), Some(OCI_MANIFEST)).unwrap_err();
        assert!(e.message.contains("does not match"));
    }
}
