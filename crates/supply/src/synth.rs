//! Writing small image tarballs in the `docker save` layout, for tests and benchmarks.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

/// One entry of a synthetic layer.
#[derive(Debug, Clone)]
pub enum SynthEntry {
    File {
        path: String,
        data: Vec<u8>,
    },
    /// A `.wh.<name>` whiteout deleting `path`.
    Whiteout {
        path: String,
    },
    /// A `.wh..wh..opq` marker making `dir` opaque.
    Opaque {
        dir: String,
    },
}

/// A synthetic image: layers of entries plus a few config fields.
#[derive(Debug, Clone, Default)]
pub struct SynthImage {
    pub layers: Vec<(Vec<SynthEntry>, bool)>,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub history: Vec<String>,
}

impl SynthImage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a layer; `gzip` compresses it.
    pub fn layer(mut self, entries: Vec<SynthEntry>, gzip: bool) -> Self {
        self.layers.push((entries, gzip));
        self
    }

    pub fn file(path: &str, data: impl Into<Vec<u8>>) -> SynthEntry {
        SynthEntry::File {
            path: path.to_string(),
            data: data.into(),
        }
    }

    /// Writes the image tarball in the legacy layout (`manifest.json`) or, with `oci`, the
    /// OCI layout (`index.json` + `blobs/sha256`).
    pub fn write(&self, out: &Path, oci: bool) -> std::io::Result<()> {
        let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_members = Vec::new();
        for (entries, gzip) in &self.layers {
            let tar_bytes = layer_tar(entries)?;
            diff_ids.push(format!(
                "sha256:{}",
                hex::encode(Sha256::digest(&tar_bytes))
            ));
            let blob = if *gzip {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&tar_bytes)?;
                enc.finish()?
            } else {
                tar_bytes
            };
            let hex = hex::encode(Sha256::digest(&blob));
            let member = if oci {
                format!("blobs/sha256/{hex}")
            } else {
                format!("{hex}/layer.tar")
            };
            layer_members.push((member.clone(), hex, blob.len()));
            blobs.push((member, blob));
        }
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": self.env,
                "Cmd": self.cmd,
                "Labels": self.labels.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            },
            "history": self.history.iter().map(|h| serde_json::json!({"created_by": h})).collect::<Vec<_>>(),
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config_bytes = serde_json::to_vec(&config)?;
        let config_hex = hex::encode(Sha256::digest(&config_bytes));
        if oci {
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_hex}"), "size": config_bytes.len()},
                "layers": layer_members.iter().map(|(_, hex, size)| serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{hex}"), "size": size})).collect::<Vec<_>>(),
            });
            let manifest_bytes = serde_json::to_vec(&manifest)?;
            let manifest_hex = hex::encode(Sha256::digest(&manifest_bytes));
            let index = serde_json::json!({
                "schemaVersion": 2,
                "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{manifest_hex}"), "size": manifest_bytes.len(),
                    "annotations": {"io.containerd.image.name": "synth:latest"}}],
            });
            blobs.push((format!("blobs/sha256/{config_hex}"), config_bytes));
            blobs.push((format!("blobs/sha256/{manifest_hex}"), manifest_bytes));
            blobs.push(("index.json".into(), serde_json::to_vec(&index)?));
            blobs.push((
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ));
        } else {
            let manifest = serde_json::json!([{
                "Config": format!("{config_hex}.json"),
                "RepoTags": ["synth:latest"],
                "Layers": layer_members.iter().map(|(m, _, _)| m.clone()).collect::<Vec<_>>(),
            }]);
            blobs.push((format!("{config_hex}.json"), config_bytes));
            blobs.push(("manifest.json".into(), serde_json::to_vec(&manifest)?));
        }
        let file = std::fs::File::create(out)?;
        let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
        for (name, data) in &blobs {
            append(&mut builder, name, data)?;
        }
        builder.into_inner()?.flush()
    }
}

fn append<W: Write>(b: &mut tar::Builder<W>, path: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(0);
    b.append_data(&mut header, path, data)
}

fn layer_tar(entries: &[SynthEntry]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            SynthEntry::File { path, data } => append(&mut b, path, data)?,
            SynthEntry::Whiteout { path } => {
                let (dir, name) = match path.rfind('/') {
                    Some(i) => (&path[..=i], &path[i + 1..]),
                    None => ("", path.as_str()),
                };
                append(&mut b, &format!("{dir}.wh.{name}"), b"")?
            }
            SynthEntry::Opaque { dir } => append(&mut b, &format!("{dir}/.wh..wh..opq"), b"")?,
        }
    }
    b.into_inner()
}
