//! Reading `docker save` tarballs (legacy `manifest.json` layout and OCI `index.json` layout)
//! without unpacking them: layers are streamed, whiteouts are honoured in a merged view, and
//! every file of every layer can still be visited (for secrets that a later layer deleted).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, SupplyError};

/// Bounds that keep a hostile or huge image from exhausting memory or time.
/// A file the scan did not read because it is over [`Limits::max_file_bytes`]: a secret or a
/// package database could hide in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    /// Path in the image, without a leading `/`.
    pub path: String,
    /// Digest of the layer that holds it.
    pub layer: String,
    pub size: u64,
    /// The file size limit it is over.
    pub limit: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file read into memory for inventory and secret scanning; bigger ones are
    /// skipped with a warning.
    pub max_file_bytes: u64,
    /// Largest ELF binary read into memory to look for embedded dependency lists.
    pub max_binary_bytes: u64,
    /// Largest decompressed size of one layer; past it the scan stops (gzip bomb guard).
    pub max_layer_bytes: u64,
    /// Most tar entries across all layers.
    pub max_entries: u64,
    /// Largest manifest/config/index JSON document.
    pub max_metadata_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 8 << 20,
            max_binary_bytes: 128 << 20,
            max_layer_bytes: 16 << 30,
            max_entries: 2_000_000,
            max_metadata_bytes: 32 << 20,
        }
    }
}

/// The parts of an image config that scanning looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub os: String,
    pub architecture: String,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// `created_by` of every history entry, in order.
    pub history: Vec<String>,
}

/// One layer of an image, bottom first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// The layer's uncompressed digest (`diff_id`) when the config names it, else the digest
    /// of the blob.
    pub digest: String,
    /// Member of the image tarball holding the layer.
    pub member: String,
    /// Size of the (possibly compressed) layer blob.
    pub size: u64,
    #[serde(skip)]
    offset: u64,
}

/// What became of a file by the top layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "fate")]
pub enum FileFate {
    /// Visible in the final filesystem.
    Present,
    /// A later layer wrote the same path again.
    Replaced { by_layer: usize },
    /// A later layer deleted it (whiteout or opaque directory).
    Deleted,
}

/// A regular file met while walking the layers.
#[derive(Debug, Clone, Copy)]
pub struct FileMeta<'a> {
    pub layer_index: usize,
    pub layer_digest: &'a str,
    /// Path inside the image, without a leading `/` or `./`.
    pub path: &'a str,
    pub size: u64,
    pub mode: u32,
    pub fate: FileFate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Visible {
    layer: usize,
    ordinal: u64,
}

/// An opened image tarball. Holds only metadata and the merged view's path index; layer
/// contents are streamed from disk on every walk.
#[derive(Debug)]
pub struct Image {
    pub path: PathBuf,
    /// Image id: `sha256:` of the config blob.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub config: ImageConfig,
    pub layers: Vec<LayerInfo>,
    /// Non-fatal problems met while reading.
    pub warnings: Vec<String>,
    limits: Limits,
    merged: BTreeMap<String, Visible>,
}

/// Opens image tarballs.
pub struct ImageReader;

impl ImageReader {
    /// Opens `path` with default [`Limits`].
    pub fn open(path: impl AsRef<Path>) -> Result<Image> {
        Self::open_with_limits(path, Limits::default())
    }

    /// Opens `path`, reads its manifest and config and builds the merged filesystem view.
    pub fn open_with_limits(path: impl AsRef<Path>, limits: Limits) -> Result<Image> {
        let path = path.as_ref().to_path_buf();
        let members = index_members(&path)?;
        let not_image = |reason: String| SupplyError::NotAnImage {
            path: path.clone(),
            reason,
        };
        let read_member = |name: &str| -> Result<Vec<u8>> {
            let m = members
                .get(name)
                .ok_or_else(|| not_image(format!("it has no member {name}")))?;
            if m.1 > limits.max_metadata_bytes {
                return Err(not_image(format!(
                    "member {name} is {} bytes, over the metadata limit",
                    m.1
                )));
            }
            let mut file = File::open(&path).map_err(|e| SupplyError::io(&path, e))?;
            file.seek(SeekFrom::Start(m.0))
                .map_err(|e| SupplyError::io(&path, e))?;
            let mut buf = Vec::with_capacity(m.1 as usize);
            file.take(m.1)
                .read_to_end(&mut buf)
                .map_err(|e| SupplyError::io(&path, e))?;
            Ok(buf)
        };
        let parse = |name: &str, bytes: &[u8]| -> Result<serde_json::Value> {
            serde_json::from_slice(bytes).map_err(|e| SupplyError::Json {
                what: format!("{} member {name}", path.display()),
                detail: e.to_string(),
            })
        };

        let (config_name, layer_names, repo_tags) = if members.contains_key("manifest.json") {
            let manifest = parse("manifest.json", &read_member("manifest.json")?)?;
            let first = manifest
                .as_array()
                .and_then(|a| a.first())
                .ok_or_else(|| not_image("manifest.json lists no image".into()))?;
            let config = first["Config"]
                .as_str()
                .ok_or_else(|| not_image("manifest.json has no Config".into()))?
                .to_string();
            let layers = strings(&first["Layers"]);
            (config, layers, strings(&first["RepoTags"]))
        } else if members.contains_key("index.json") {
            let mut doc = parse("index.json", &read_member("index.json")?)?;
            let mut tags = Vec::new();
            // An index may point at another index (multi-platform); follow a few levels.
            for _ in 0..4 {
                if doc.get("layers").is_some() {
                    break;
                }
                let manifests = doc["manifests"].as_array().cloned().unwrap_or_default();
                let chosen = manifests
                    .iter()
                    .find(|m| {
                        m["platform"]["os"].as_str().unwrap_or("linux") == "linux"
                            && m["platform"]["architecture"] != "unknown"
                    })
                    .or_else(|| manifests.first())
                    .ok_or_else(|| not_image("index.json lists no manifest".into()))?;
                if let Some(t) = chosen["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .or_else(|| chosen["annotations"]["io.containerd.image.name"].as_str())
                {
                    tags.push(t.to_string());
                }
                let name = blob_member(chosen["digest"].as_str().unwrap_or(""))
                    .ok_or_else(|| not_image("manifest entry has no valid digest".into()))?;
                doc = parse(&name, &read_member(&name)?)?;
            }
            let config = blob_member(doc["config"]["digest"].as_str().unwrap_or(""))
                .ok_or_else(|| not_image("OCI manifest has no config digest".into()))?;
            let layers = doc["layers"]
                .as_array()
                .map(|ls| {
                    ls.iter()
                        .filter_map(|l| blob_member(l["digest"].as_str().unwrap_or("")))
                        .collect()
                })
                .unwrap_or_default();
            (config, layers, tags)
        } else {
            return Err(not_image(
                "it has neither manifest.json nor index.json; create it with `docker save`".into(),
            ));
        };

        let config_bytes = read_member(&config_name)?;
        let config_json = parse(&config_name, &config_bytes)?;
        let id = format!("sha256:{}", hex::encode(Sha256::digest(&config_bytes)));
        let config = parse_config(&config_json);
        let diff_ids = strings(&config_json["rootfs"]["diff_ids"]);

        let mut layers = Vec::new();
        for (i, name) in layer_names.iter().enumerate() {
            let (offset, size) = *members
                .get(name.as_str())
                .ok_or_else(|| not_image(format!("layer {name} is missing from the tarball")))?;
            let digest = if diff_ids.len() == layer_names.len() {
                diff_ids[i].clone()
            } else {
                digest_from_member(name)
            };
            layers.push(LayerInfo {
                digest,
                member: name.clone(),
                size,
                offset,
            });
        }

        let mut image = Image {
            path,
            id,
            repo_tags,
            config,
            layers,
            warnings: Vec::new(),
            limits,
            merged: BTreeMap::new(),
        };
        image.build_merged_view()?;
        Ok(image)
    }
}

impl Image {
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Paths visible in the final filesystem, sorted.
    pub fn visible_paths(&self) -> impl Iterator<Item = &str> {
        self.merged.keys().map(String::as_str)
    }

    /// Whether `path` (no leading `/`) exists in the final filesystem.
    pub fn is_visible(&self, path: &str) -> bool {
        self.merged.contains_key(normalize(path).as_str())
    }

    fn build_merged_view(&mut self) -> Result<()> {
        let mut merged: BTreeMap<String, Visible> = BTreeMap::new();
        let mut total: u64 = 0;
        let max_entries = self.limits.max_entries;
        for index in 0..self.layers.len() {
            let mut ordinal = 0u64;
            self.walk_layer(index, |entry, path| {
                ordinal += 1;
                total += 1;
                if total > max_entries {
                    return Err(SupplyError::TooManyEntries { limit: max_entries });
                }
                let (dir, base) = split(path);
                if base == ".wh..wh..opq" {
                    let prefix = if dir.is_empty() {
                        String::new()
                    } else {
                        format!("{dir}/")
                    };
                    remove_under(&mut merged, &prefix, |v| v.layer < index);
                } else if let Some(name) = base.strip_prefix(".wh.") {
                    let target = if dir.is_empty() {
                        name.to_string()
                    } else {
                        format!("{dir}/{name}")
                    };
                    merged.remove(&target);
                    remove_under(&mut merged, &format!("{target}/"), |_| true);
                } else if !entry.header().entry_type().is_dir() {
                    merged.insert(
                        path.to_string(),
                        Visible {
                            layer: index,
                            ordinal,
                        },
                    );
                }
                Ok(())
            })?;
        }
        self.merged = merged;
        Ok(())
    }

    /// Visits every regular file of every layer, bottom layer first. `want` sees the metadata
    /// and decides whether the contents are needed; wanted files within the size limits are
    /// read into memory and passed to `on_file`. Oversized wanted files are skipped with a
    /// warning in the returned list.
    pub fn visit_files(
        &self,
        want: impl FnMut(&FileMeta<'_>) -> bool,
        on_file: impl FnMut(&FileMeta<'_>, &[u8]),
    ) -> Result<Vec<String>> {
        let mut skipped = Vec::new();
        self.visit_files_noting_skipped(want, on_file, &mut skipped)
    }

    /// [`Image::visit_files`], also listing every wanted file skipped for its size in
    /// `skipped` (what was not scanned, for the gate to judge).
    pub fn visit_files_noting_skipped(
        &self,
        mut want: impl FnMut(&FileMeta<'_>) -> bool,
        mut on_file: impl FnMut(&FileMeta<'_>, &[u8]),
        skipped: &mut Vec<SkippedFile>,
    ) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        let mut buf = Vec::new();
        for index in 0..self.layers.len() {
            let digest = self.layers[index].digest.as_str();
            let mut ordinal = 0u64;
            self.walk_layer(index, |entry, path| {
                ordinal += 1;
                let header = entry.header();
                let kind = header.entry_type();
                if !(kind.is_file() || kind == tar::EntryType::Continuous) {
                    return Ok(());
                }
                if split(path).1.starts_with(".wh.") {
                    return Ok(());
                }
                let fate = match self.merged.get(path) {
                    Some(v) if v.layer == index && v.ordinal == ordinal => FileFate::Present,
                    Some(v) if v.layer > index => FileFate::Replaced { by_layer: v.layer },
                    Some(_) => FileFate::Replaced { by_layer: index },
                    None => FileFate::Deleted,
                };
                let size = entry.size();
                let meta = FileMeta {
                    layer_index: index,
                    layer_digest: digest,
                    path,
                    size,
                    mode: header.mode().unwrap_or(0),
                    fate,
                };
                if !want(&meta) {
                    return Ok(());
                }
                buf.clear();
                if size > self.limits.max_file_bytes {
                    let mut magic = [0u8; 4];
                    let got = read_up_to(entry, &mut magic).map_err(|e| tar_error(digest, e))?;
                    if got == 4 && magic == *b"\x7fELF" && size <= self.limits.max_binary_bytes
                    {
                        buf.extend_from_slice(&magic);
                    } else {
                        skipped.push(SkippedFile {
                            path: path.to_string(),
                            layer: digest.to_string(),
                            size,
                            limit: self.limits.max_file_bytes,
                        });
                        push_warning(
                            &mut warnings,
                            format!(
                                "skipped {path} in layer {digest}: {size} bytes is over the {} byte file limit",
                                self.limits.max_file_bytes
                            ),
                        );
                        return Ok(());
                    }
                }
                entry
                    .read_to_end(&mut buf)
                    .map_err(|e| tar_error(digest, e))?;
                on_file(&meta, &buf);
                Ok(())
            })?;
        }
        Ok(warnings)
    }

    /// Streams one layer, calling `f` for every entry with its normalized path.
    fn walk_layer(
        &self,
        index: usize,
        mut f: impl FnMut(&mut tar::Entry<'_, Box<dyn Read + '_>>, &str) -> Result<()>,
    ) -> Result<()> {
        let layer = &self.layers[index];
        let mut file = File::open(&self.path).map_err(|e| SupplyError::io(&self.path, e))?;
        file.seek(SeekFrom::Start(layer.offset))
            .map_err(|e| SupplyError::io(&self.path, e))?;
        let mut raw = BufReader::with_capacity(256 << 10, file.take(layer.size));
        let mut magic = [0u8; 4];
        let n = {
            use std::io::BufRead;
            let b = raw.fill_buf().map_err(|e| SupplyError::io(&self.path, e))?;
            let n = b.len().min(4);
            magic[..n].copy_from_slice(&b[..n]);
            n
        };
        let exceeded = Rc::new(Cell::new(false));
        let decoded: Box<dyn Read> = if n >= 2 && magic[..2] == [0x1f, 0x8b] {
            Box::new(flate2::bufread::MultiGzDecoder::new(raw))
        } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(SupplyError::CorruptTar {
                what: format!("layer {}", layer.digest),
                detail: "zstd-compressed layers are not supported".into(),
            });
        } else {
            Box::new(raw)
        };
        let bounded: Box<dyn Read> = Box::new(Bounded {
            inner: decoded,
            left: self.limits.max_layer_bytes,
            exceeded: exceeded.clone(),
        });
        let mut archive = tar::Archive::new(bounded);
        let fail = |e: std::io::Error| {
            if exceeded.get() {
                SupplyError::LayerTooLarge {
                    layer: layer.digest.clone(),
                    limit: self.limits.max_layer_bytes,
                }
            } else {
                tar_error(&layer.digest, e)
            }
        };
        let entries = archive.entries().map_err(fail)?;
        for entry in entries {
            let mut entry = entry.map_err(fail)?;
            let path = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
            if path.is_empty() {
                continue;
            }
            match f(&mut entry, &path) {
                Ok(()) => {}
                Err(_) if exceeded.get() => {
                    return Err(SupplyError::LayerTooLarge {
                        layer: layer.digest.clone(),
                        limit: self.limits.max_layer_bytes,
                    })
                }
                Err(e) => return Err(e),
            }
        }
        if exceeded.get() {
            return Err(SupplyError::LayerTooLarge {
                layer: layer.digest.clone(),
                limit: self.limits.max_layer_bytes,
            });
        }
        Ok(())
    }
}

const MAX_WARNINGS: usize = 200;

pub(crate) fn push_warning(warnings: &mut Vec<String>, w: String) {
    if warnings.len() < MAX_WARNINGS {
        warnings.push(w);
    } else if warnings.len() == MAX_WARNINGS {
        warnings.push("further warnings omitted".into());
    }
}

fn tar_error(layer: &str, e: std::io::Error) -> SupplyError {
    SupplyError::CorruptTar {
        what: format!("layer {layer}"),
        detail: e.to_string(),
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// A reader that fails once more than `left` bytes have come through.
struct Bounded<R> {
    inner: R,
    left: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.exceeded.set(true);
            return Err(std::io::Error::other("decompressed size limit exceeded"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Offsets and sizes of the image tarball's members.
fn index_members(path: &Path) -> Result<HashMap<String, (u64, u64)>> {
    let mut file = File::open(path).map_err(|e| SupplyError::io(path, e))?;
    let len = file.metadata().map_err(|e| SupplyError::io(path, e))?.len();
    let mut magic = [0u8; 2];
    let got = read_up_to(&mut file, &mut magic).map_err(|e| SupplyError::io(path, e))?;
    if got == 2 && magic == [0x1f, 0x8b] {
        return Err(SupplyError::NotAnImage {
            path: path.to_path_buf(),
            reason: "it is gzip-compressed; decompress it (gunzip) and scan the .tar".into(),
        });
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| SupplyError::io(path, e))?;
    let corrupt = |e: std::io::Error| SupplyError::CorruptTar {
        what: path.display().to_string(),
        detail: e.to_string(),
    };
    let mut archive = tar::Archive::new(file);
    let mut members = HashMap::new();
    for entry in archive.entries_with_seek().map_err(corrupt)? {
        let entry = entry.map_err(corrupt)?;
        let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
        let offset = entry.raw_file_position();
        let size = entry.size();
        if offset.saturating_add(size) > len {
            return Err(SupplyError::CorruptTar {
                what: path.display().to_string(),
                detail: format!("member {name} is truncated"),
            });
        }
        if entry.header().entry_type().is_file() {
            members.insert(name, (offset, size));
        }
    }
    if members.is_empty() {
        return Err(SupplyError::NotAnImage {
            path: path.to_path_buf(),
            reason: "it holds no files".into(),
        });
    }
    Ok(members)
}

fn parse_config(v: &serde_json::Value) -> ImageConfig {
    let c = &v["config"];
    ImageConfig {
        os: v["os"].as_str().unwrap_or_default().to_string(),
        architecture: v["architecture"].as_str().unwrap_or_default().to_string(),
        env: strings(&c["Env"]),
        cmd: strings(&c["Cmd"]),
        entrypoint: strings(&c["Entrypoint"]),
        labels: c["Labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        history: v["history"]
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|e| e["created_by"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        serde_json::Value::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn blob_member(digest: &str) -> Option<String> {
    let (algo, hex) = digest.split_once(':')?;
    if algo.is_empty() || hex.is_empty() || hex.contains('/') || algo.contains('/') {
        return None;
    }
    Some(format!("blobs/{algo}/{hex}"))
}

fn digest_from_member(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("blobs/") {
        if let Some((algo, hex)) = rest.split_once('/') {
            return format!("{algo}:{hex}");
        }
    }
    let first = name.split('/').next().unwrap_or(name);
    if first.len() == 64 && first.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("sha256:{first}")
    } else {
        name.to_string()
    }
}

/// `./a/b/` → `a/b`; `/a` → `a`.
pub(crate) fn normalize(p: &str) -> String {
    let mut s = p;
    loop {
        if let Some(r) = s.strip_prefix("./") {
            s = r;
        } else if let Some(r) = s.strip_prefix('/') {
            s = r;
        } else {
            break;
        }
    }
    let s = s.trim_end_matches('/');
    if s == "." {
        String::new()
    } else {
        s.to_string()
    }
}

fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

fn remove_under(
    merged: &mut BTreeMap<String, Visible>,
    prefix: &str,
    pred: impl Fn(&Visible) -> bool,
) {
    let doomed: Vec<String> = merged
        .range(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .filter(|(_, v)| pred(v))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        merged.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize() {
        assert_eq!(normalize("./etc/passwd"), "etc/passwd");
        assert_eq!(normalize("/usr/lib/"), "usr/lib");
        assert_eq!(normalize("./"), "");
        assert_eq!(split("a/b/.wh.c"), ("a/b", ".wh.c"));
        assert_eq!(split(".wh.c"), ("", ".wh.c"));
    }

    #[test]
    fn member_digests() {
        let hex = "a".repeat(64);
        assert_eq!(
            digest_from_member(&format!("blobs/sha256/{hex}")),
            format!("sha256:{hex}")
        );
        assert_eq!(
            digest_from_member(&format!("{hex}/layer.tar")),
            format!("sha256:{hex}")
        );
        assert_eq!(blob_member("sha256:../../etc"), None);
        assert_eq!(
            blob_member(&format!("sha256:{hex}")),
            Some(format!("blobs/sha256/{hex}"))
        );
    }

    #[test]
    fn bounded_reader_flags_overrun() {
        let flag = Rc::new(Cell::new(false));
        let mut r = Bounded {
            inner: &[0u8; 100][..],
            left: 10,
            exceeded: flag.clone(),
        };
        let mut buf = Vec::new();
        assert!(r.read_to_end(&mut buf).is_err());
        assert!(flag.get());
    }
}
