//! Manifest validation, pure over bytes: media type negotiation between the request's
//! `Content-Type` and the document, schema checks of the four manifest kinds berth
//! accepts, and extraction of what the manifest references (blobs, child manifests,
//! subject) so the state machine can check those references atomically.

use std::collections::BTreeMap;

use berth_types::{Digest, DigestAlgorithm};
use serde::Deserialize;
use serde_json::Value;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Layers that are by definition not stored in a registry (Windows base layers).
const FOREIGN_LAYERS: [&str; 2] = [
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
];

/// Why a manifest was refused. Each maps to MANIFEST_INVALID or DIGEST_INVALID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    NotJson(String),
    #[error("unsupported manifest media type {0:?}")]
    UnknownMediaType(String),
    #[error("Content-Type {header:?} does not match the manifest's mediaType {document:?}")]
    MediaTypeMismatch { header: String, document: String },
    #[error("manifest schema: {0}")]
    Schema(String),
    #[error("manifest digest {computed} does not match the reference {expected}")]
    DigestMismatch { expected: Digest, computed: Digest },
}

/// A validated manifest and what it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    pub media_type: String,
    pub digest: Digest,
    pub blobs: Vec<Digest>,
    pub manifests: Vec<Digest>,
    pub subject: Option<Digest>,
    /// `artifactType`, or for an image manifest without one, its config media type.
    pub artifact_type: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// Hashes `bytes` with `algorithm`.
pub fn digest_of(algorithm: DigestAlgorithm, bytes: &[u8]) -> Digest {
    use sha2::Digest as _;
    match algorithm {
        DigestAlgorithm::Sha256 => Digest::from_bytes(algorithm, &sha2::Sha256::digest(bytes)),
        DigestAlgorithm::Sha512 => Digest::from_bytes(algorithm, &sha2::Sha512::digest(bytes)),
    }
}

fn descriptor_digest(d: &Descriptor, what: &str) -> Result<Digest, ManifestError> {
    if d.size < 0 {
        return Err(ManifestError::Schema(format!("{what} has a negative size")));
    }
    if d.media_type.is_empty() {
        return Err(ManifestError::Schema(format!("{what} has no mediaType")));
    }
    d.digest
        .parse()
        .map_err(|e| ManifestError::Schema(format!("{what} digest: {e}")))
}

/// Strips parameters (`; charset=...`) and whitespace from a Content-Type.
fn bare_media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Validates a pushed manifest. `expected` is the digest from the URL, when the
/// manifest was pushed by digest; the manifest digest uses its algorithm.
pub fn parse(
    content_type: Option<&str>,
    bytes: &[u8],
    expected: Option<&Digest>,
) -> Result<ParsedManifest, ManifestError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::NotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(ManifestError::Schema(
            "manifest must be a JSON object".into(),
        ));
    }
    let doc: Document =
        serde_json::from_value(value).map_err(|e| ManifestError::Schema(e.to_string()))?;
    let header = content_type.map(bare_media_type).filter(|s| !s.is_empty());
    let media_type = match (header, doc.media_type.as_deref()) {
        (Some(h), Some(d)) if h != d => {
            return Err(ManifestError::MediaTypeMismatch {
                header: h.to_owned(),
                document: d.to_owned(),
            });
        }
        (_, Some(d)) => d.to_owned(),
        (Some(h), None) => h.to_owned(),
        (None, None) => {
            return Err(ManifestError::Schema(
                "no Content-Type and no mediaType in the manifest".into(),
            ));
        }
    };
    if doc.schema_version != Some(2) {
        return Err(ManifestError::Schema("schemaVersion must be 2".into()));
    }
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    let mut artifact_type = doc.artifact_type.clone();
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            if doc.manifests.is_some() {
                return Err(ManifestError::Schema(
                    "an image manifest has no manifests".into(),
                ));
            }
            let config = doc
                .config
                .as_ref()
                .ok_or_else(|| ManifestError::Schema("config is required".into()))?;
            blobs.push(descriptor_digest(config, "config")?);
            let layers = doc
                .layers
                .as_ref()
                .ok_or_else(|| ManifestError::Schema("layers is required".into()))?;
            for (i, layer) in layers.iter().enumerate() {
                let d = descriptor_digest(layer, &format!("layers[{i}]"))?;
                if !FOREIGN_LAYERS.contains(&layer.media_type.as_str()) {
                    blobs.push(d);
                }
            }
            if media_type == OCI_MANIFEST && artifact_type.is_none() {
                artifact_type = Some(config.media_type.clone());
            }
        }
        OCI_INDEX | DOCKER_LIST => {
            if doc.config.is_some() || doc.layers.is_some() {
                return Err(ManifestError::Schema(
                    "an index has no config or layers".into(),
                ));
            }
            let children = doc
                .manifests
                .as_ref()
                .ok_or_else(|| ManifestError::Schema("manifests is required".into()))?;
            for (i, m) in children.iter().enumerate() {
                manifests.push(descriptor_digest(m, &format!("manifests[{i}]"))?);
            }
        }
        other => return Err(ManifestError::UnknownMediaType(other.to_owned())),
    }
    if media_type.starts_with("application/vnd.docker") && doc.subject.is_some() {
        return Err(ManifestError::Schema(
            "Docker manifests have no subject".into(),
        ));
    }
    let subject = doc
        .subject
        .as_ref()
        .map(|s| descriptor_digest(s, "subject"))
        .transpose()?;
    let algorithm = expected.map_or(DigestAlgorithm::Sha256, Digest::algorithm);
    let digest = digest_of(algorithm, bytes);
    if let Some(expected) = expected
        && *expected != digest
    {
        return Err(ManifestError::DigestMismatch {
            expected: expected.clone(),
            computed: digest,
        });
    }
    blobs.sort();
    blobs.dedup();
    manifests.sort();
    manifests.dedup();
    Ok(ParsedManifest {
        media_type,
        digest,
        blobs,
        manifests,
        subject,
        artifact_type,
        annotations: doc.annotations.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn image(media_type: Option<&str>) -> Vec<u8> {
        let mut v = json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d(1), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d(2), "size": 10}]
        });
        if let Some(mt) = media_type {
            v["mediaType"] = json!(mt);
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn image_manifest_references_config_and_layers() {
        let bytes = image(Some(OCI_MANIFEST));
        let p = parse(Some(OCI_MANIFEST), &bytes, None).unwrap();
        assert_eq!(p.media_type, OCI_MANIFEST);
        assert_eq!(p.blobs, vec![d(1).parse().unwrap(), d(2).parse().unwrap()]);
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert_eq!(p.digest, digest_of(DigestAlgorithm::Sha256, &bytes));
    }

    #[test]
    fn media_type_comes_from_header_when_document_has_none() {
        let bytes = image(None);
        assert_eq!(
            parse(Some(OCI_MANIFEST), &bytes, None).unwrap().media_type,
            OCI_MANIFEST
        );
        assert!(matches!(
            parse(None, &bytes, None),
            Err(ManifestError::Schema(_))
        ));
    }

    #[test]
    fn refusals_table() {
        let good = image(Some(OCI_MANIFEST));
        let other: Digest = d(9).parse().unwrap();
        type Case<'a> = (Option<&'a str>, Vec<u8>, Option<Digest>, &'a str);
        let cases: Vec<Case> = vec![
            (Some(OCI_MANIFEST), b"not json".to_vec(), None, "NotJson"),
            (Some(OCI_MANIFEST), b"[1,2]".to_vec(), None, "Schema"),
            (Some(DOCKER_MANIFEST), good.clone(), None, "MediaTypeMismatch"),
            (Some("text/plain"), image(None), None, "UnknownMediaType"),
            (Some(OCI_MANIFEST), good.clone(), Some(other), "DigestMismatch"),
            (
                Some(OCI_MANIFEST),
                serde_json::to_vec(&json!({"schemaVersion": 1, "mediaType": OCI_MANIFEST})).unwrap(),
                None,
                "Schema",
            ),
            (
                Some(OCI_MANIFEST),
                serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []})).unwrap(),
                None,
                "Schema",
            ),
            (
                Some(OCI_INDEX),
                serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha256:zz", "size": 1}]})).unwrap(),
                None,
                "Schema",
            ),
        ];
        for (ct, body, expected, want) in cases {
            let err = parse(ct, &body, expected.as_ref()).unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{want}: got {err:?}");
        }
    }

    #[test]
    fn index_references_children_and_subject_is_extracted() {
        let v = json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": "application/x-sig",
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": d(3), "size": 5}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": d(4), "size": 5},
            "annotations": {"a": "b"}
        });
        let bytes = serde_json::to_vec(&v).unwrap();
        let p = parse(Some(OCI_INDEX), &bytes, None).unwrap();
        assert_eq!(p.manifests, vec![d(3).parse().unwrap()]);
        assert!(p.blobs.is_empty());
        assert_eq!(p.subject, Some(d(4).parse().unwrap()));
        assert_eq!(p.artifact_type.as_deref(), Some("application/x-sig"));
        assert_eq!(p.annotations.get("a").map(String::as_str), Some("b"));
    }

    #[test]
    fn sha512_reference_hashes_with_sha512() {
        let bytes = image(Some(OCI_MANIFEST));
        let want = digest_of(DigestAlgorithm::Sha512, &bytes);
        assert_eq!(
            parse(Some(OCI_MANIFEST), &bytes, Some(&want))
                .unwrap()
                .digest,
            want
        );
    }
}
