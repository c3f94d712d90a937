//! Everything the registry knows about the OCI Distribution protocol itself, with no IO:
//! validated names and digests, the endpoint parser, manifest reading, error codes and the
//! header names. The HTTP layer and the services build on this module, never the other way.

pub mod error;
pub mod manifest;
pub mod names;
pub mod router;

pub use error::{ErrorCode, RegistryError};
pub use names::{Algorithm, Digest, Reference, RepoName, Tag};
pub use router::Endpoint;

/// An action a token may grant on a repository (Docker token spec).
pub use afreg_config::Action;

pub const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
pub const DOCKER_UPLOAD_UUID: &str = "docker-upload-uuid";
pub const OCI_SUBJECT: &str = "oci-subject";
pub const OCI_FILTERS_APPLIED: &str = "oci-filters-applied";
pub const API_VERSION_HEADER: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");
