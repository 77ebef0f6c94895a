//! A synthetic OCI image (config, layers, manifest) made from generated layer bytes,
//! pushed the way a client pushes one: the blobs first, then the manifest under a tag.

use anyhow::Context;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::content::sha256_digest;
use crate::registry;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A blob and its digest.
#[derive(Clone, Debug)]
pub struct Blob {
    pub data: Bytes,
    pub digest: String,
}

impl Blob {
    pub fn new(data: Bytes) -> Blob {
        let digest = sha256_digest(&data);
        Blob { data, digest }
    }

    fn descriptor(&self, media_type: &str) -> Value {
        json!({ "mediaType": media_type, "digest": self.digest, "size": self.data.len() })
    }
}

/// An image: the config blob, the layer blobs, and the manifest that names them.
#[derive(Debug)]
pub struct Image {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Blob,
}

impl Image {
    /// Builds the config and the manifest around `layers`.
    pub fn build(layers: Vec<Bytes>) -> Image {
        let layers: Vec<Blob> = layers.into_iter().map(Blob::new).collect();
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        let config = Blob::new(Bytes::from(config.to_string()));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config.descriptor(CONFIG_MEDIA_TYPE),
            "layers": layers.iter().map(|l| l.descriptor(LAYER_MEDIA_TYPE)).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(Bytes::from(manifest.to_string()));
        Image {
            config,
            layers,
            manifest,
        }
    }

    /// The config, then the layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(&self.layers)
    }

    /// Pushes every blob monolithically, then the manifest under `tag`.
    pub async fn push(
        &self,
        client: &reqwest::Client,
        base: &str,
        repo: &str,
        tag: &str,
    ) -> anyhow::Result<()> {
        for blob in self.blobs() {
            registry::push_blob(client, base, repo, blob.data.clone(), &blob.digest, None).await?;
        }
        registry::put_manifest(
            client,
            base,
            repo,
            tag,
            MANIFEST_MEDIA_TYPE,
            self.manifest.data.clone(),
        )
        .await
    }
}

/// The digests of the blobs an image manifest references: the config, then the layers.
pub fn referenced_blobs(manifest: &[u8]) -> anyhow::Result<Vec<String>> {
    let doc: Value = serde_json::from_slice(manifest).context("manifest is not JSON")?;
    let digest_of = |d: &Value| -> anyhow::Result<String> {
        d.get("digest")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .context("descriptor without a digest")
    };
    let mut out = vec![digest_of(
        doc.get("config").context("manifest without a config")?,
    )?];
    for layer in doc
        .get("layers")
        .and_then(Value::as_array)
        .context("manifest without a layers array")?
    {
        out.push(digest_of(layer)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names_the_config_then_every_layer() {
        let image = Image::build(vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]);
        let mut want = vec![image.config.digest.clone()];
        want.extend(image.layers.iter().map(|l| l.digest.clone()));
        assert_eq!(referenced_blobs(&image.manifest.data).unwrap(), want);
        assert_eq!(
            image.blobs().map(|b| b.digest.clone()).collect::<Vec<_>>(),
            want
        );
        let doc: Value = serde_json::from_slice(&image.manifest.data).unwrap();
        assert_eq!(doc["layers"][1]["size"], 3);
        assert_eq!(doc["mediaType"], MANIFEST_MEDIA_TYPE);
    }

    #[test]
    fn referenced_blobs_rejects_what_is_not_an_image_manifest() {
        let cases: &[(&str, Option<usize>)] = &[
            (r#"{"config":{"digest":"sha256:a"},"layers":[]}"#, Some(1)),
            (
                r#"{"config":{"digest":"sha256:a"},"layers":[{"digest":"sha256:b"}]}"#,
                Some(2),
            ),
            ("not json", None),
            (r#"{"layers":[]}"#, None),
            (r#"{"config":{"digest":"sha256:a"}}"#, None),
            (r#"{"config":{"digest":"sha256:a"},"layers":[{}]}"#, None),
            (r#"{"config":{"digest":7},"layers":[]}"#, None),
        ];
        for (input, want) in cases {
            assert_eq!(
                referenced_blobs(input.as_bytes()).ok().map(|d| d.len()),
                *want,
                "{input}"
            );
        }
    }
}
