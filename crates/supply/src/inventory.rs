//! Package inventory: what is installed in an image, read from package databases, lock files
//! and dependency lists embedded in binaries.

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::image::{push_warning, FileFate, FileMeta, Image};
use crate::version::{normalize_pypi, Ecosystem};
use crate::Result;

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    pub ecosystem: Ecosystem,
    pub name: String,
    pub version: String,
    /// Debian/Alpine source package, when it differs from `name` or is named.
    pub source_name: Option<String>,
    /// Debian source version from `Source: name (version)`, when it differs from `version`.
    pub source_version: Option<String>,
    pub purl: String,
    /// Files the package was found in (sorted).
    pub locations: Vec<String>,
    /// Digest of the layer that (first) provided it.
    pub layer: String,
}

impl Package {
    /// The name advisories of this ecosystem index the package by: Debian and Alpine
    /// advisories name source packages.
    pub fn advisory_name(&self) -> String {
        match self.ecosystem {
            Ecosystem::Debian | Ecosystem::Alpine => self
                .source_name
                .clone()
                .unwrap_or_else(|| self.name.clone()),
            e => e.normalize_name(&self.name),
        }
    }

    /// The version advisories compare against (the source version for Debian binNMUs).
    pub fn advisory_version(&self) -> &str {
        match self.ecosystem {
            Ecosystem::Debian => self.source_version.as_deref().unwrap_or(&self.version),
            _ => &self.version,
        }
    }
}

/// The distribution an image is built on, from `etc/os-release`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distro {
    pub id: String,
    pub version_id: String,
}

/// Everything the inventory found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub distro: Option<Distro>,
    pub packages: Vec<Package>,
    pub warnings: Vec<String>,
}

/// Collects packages from files as they stream by; drive it with [`Image::visit_files`] or
/// use [`inventory`].
#[derive(Debug, Default)]
pub struct InventoryCollector {
    packages: BTreeMap<(Ecosystem, String, String), Package>,
    distro: Option<Distro>,
    warnings: Vec<String>,
}

/// Reads the inventory of the image's final filesystem (files deleted by a later layer are
/// not installed and are ignored).
pub fn inventory(image: &Image) -> Result<Inventory> {
    let mut c = InventoryCollector::default();
    let max_binary = image.limits().max_binary_bytes;
    let warnings = image.visit_files(
        |m| InventoryCollector::wants(m, max_binary),
        |m, data| c.add(m, data),
    )?;
    let mut inv = c.finish();
    inv.warnings.extend(warnings);
    Ok(inv)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    DpkgStatus,
    ApkInstalled,
    CargoLock,
    NpmLock,
    PythonMetadata,
    Requirements,
    OsRelease,
    Binary,
}

fn classify(path: &str, mode: u32) -> Option<Kind> {
    let base = path.rsplit('/').next().unwrap_or(path);
    if path == "var/lib/dpkg/status"
        || (path.starts_with("var/lib/dpkg/status.d/") && !base.ends_with(".md5sums"))
    {
        return Some(Kind::DpkgStatus);
    }
    if path == "lib/apk/db/installed" {
        return Some(Kind::ApkInstalled);
    }
    if base == "Cargo.lock" {
        return Some(Kind::CargoLock);
    }
    if base == "package-lock.json" {
        return Some(Kind::NpmLock);
    }
    if (base == "METADATA" && path.contains(".dist-info/"))
        || (base == "PKG-INFO" && path.contains(".egg-info/"))
    {
        return Some(Kind::PythonMetadata);
    }
    if base.starts_with("requirements") && base.ends_with(".txt") {
        return Some(Kind::Requirements);
    }
    if path == "etc/os-release" || path == "usr/lib/os-release" {
        return Some(Kind::OsRelease);
    }
    if mode & 0o111 != 0 || base.ends_with(".so") || path.contains(".so.") {
        return Some(Kind::Binary);
    }
    None
}

impl InventoryCollector {
    /// Whether the inventory needs this file's contents.
    pub fn wants(meta: &FileMeta<'_>, max_binary: u64) -> bool {
        meta.fate == FileFate::Present
            && match classify(meta.path, meta.mode) {
                Some(Kind::Binary) => meta.size <= max_binary && meta.size > 64,
                Some(_) => true,
                None => false,
            }
    }

    /// Feeds one file.
    pub fn add(&mut self, meta: &FileMeta<'_>, data: &[u8]) {
        if meta.fate != FileFate::Present {
            return;
        }
        let Some(kind) = classify(meta.path, meta.mode) else {
            return;
        };
        let text = || String::from_utf8_lossy(data);
        let found: Vec<Found> = match kind {
            Kind::DpkgStatus => parse_dpkg_status(&text()),
            Kind::ApkInstalled => parse_apk_installed(&text()),
            Kind::CargoLock => match parse_cargo_lock(&text()) {
                Ok(f) => f,
                Err(e) => {
                    self.warn(format!("skipped {}: {e}", meta.path));
                    return;
                }
            },
            Kind::NpmLock => match parse_npm_lock(data) {
                Ok(f) => f,
                Err(e) => {
                    self.warn(format!("skipped {}: {e}", meta.path));
                    return;
                }
            },
            Kind::PythonMetadata => parse_python_metadata(&text()).into_iter().collect(),
            Kind::Requirements => parse_requirements(&text()),
            Kind::OsRelease => {
                self.distro = parse_os_release(&text());
                return;
            }
            Kind::Binary => {
                if !data.starts_with(b"\x7fELF") {
                    return;
                }
                match parse_auditable(data) {
                    Ok(f) => f,
                    Err(e) => {
                        self.warn(format!(
                            "skipped embedded dependency list of {}: {e}",
                            meta.path
                        ));
                        return;
                    }
                }
            }
        };
        for f in found {
            let key = (f.ecosystem, f.name.clone(), f.version.clone());
            let entry = self.packages.entry(key).or_insert_with(|| Package {
                ecosystem: f.ecosystem,
                purl: String::new(),
                name: f.name,
                version: f.version,
                source_name: f.source_name,
                source_version: f.source_version,
                locations: Vec::new(),
                layer: meta.layer_digest.to_string(),
            });
            if !entry.locations.iter().any(|l| l == meta.path) {
                entry.locations.push(meta.path.to_string());
            }
        }
    }

    fn warn(&mut self, w: String) {
        push_warning(&mut self.warnings, w);
    }

    /// The sorted inventory.
    pub fn finish(self) -> Inventory {
        let distro = self.distro;
        let mut packages: Vec<Package> = self
            .packages
            .into_values()
            .map(|mut p| {
                p.locations.sort();
                p.purl = purl(&p, distro.as_ref());
                p
            })
            .collect();
        packages.sort();
        Inventory {
            distro,
            packages,
            warnings: self.warnings,
        }
    }
}

struct Found {
    ecosystem: Ecosystem,
    name: String,
    version: String,
    source_name: Option<String>,
    source_version: Option<String>,
}

impl Found {
    fn new(ecosystem: Ecosystem, name: &str, version: &str) -> Found {
        Found {
            ecosystem,
            name: name.to_string(),
            version: version.to_string(),
            source_name: None,
            source_version: None,
        }
    }
}

/// Paragraphs of `Field: value` lines (continuation lines are skipped).
fn paragraphs(text: &str) -> impl Iterator<Item = BTreeMap<&str, &str>> {
    text.split("\n\n").filter_map(|para| {
        let mut fields = BTreeMap::new();
        for line in para.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k.trim(), v.trim());
            }
        }
        (!fields.is_empty()).then_some(fields)
    })
}

fn parse_dpkg_status(text: &str) -> Vec<Found> {
    let text = text.replace("\r\n", "\n");
    paragraphs(&text)
        .filter_map(|f| {
            let name = *f.get("Package")?;
            let version = *f.get("Version")?;
            if version.is_empty() {
                return None;
            }
            if let Some(status) = f.get("Status") {
                // Only installed (or half-configured) packages count; `deinstall ok
                // config-files` leaves nothing to exploit but a conffile.
                let state = status.split_whitespace().last().unwrap_or("");
                if matches!(state, "not-installed" | "config-files") {
                    return None;
                }
            }
            let mut found = Found::new(Ecosystem::Debian, name, version);
            if let Some(src) = f.get("Source") {
                let (sname, sversion) = match src.split_once('(') {
                    Some((n, v)) => (n.trim(), Some(v.trim_end_matches(')').trim())),
                    None => (src.trim(), None),
                };
                if !sname.is_empty() {
                    found.source_name = Some(sname.to_string());
                }
                found.source_version = sversion
                    .filter(|v| !v.is_empty() && *v != version)
                    .map(str::to_string);
            }
            Some(found)
        })
        .collect()
}

fn parse_apk_installed(text: &str) -> Vec<Found> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let (mut name, mut version, mut origin) = (None, None, None);
        for line in para.lines() {
            if let Some(v) = line.strip_prefix("P:") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("V:") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("o:") {
                origin = Some(v.trim());
            }
        }
        if let (Some(n), Some(v)) = (name, version) {
            let mut f = Found::new(Ecosystem::Alpine, n, v);
            f.source_name = origin.map(str::to_string);
            out.push(f);
        }
    }
    out
}

fn parse_cargo_lock(text: &str) -> Result<Vec<Found>, String> {
    #[derive(Deserialize)]
    struct Lock {
        #[serde(default)]
        package: Vec<LockPackage>,
    }
    #[derive(Deserialize)]
    struct LockPackage {
        name: String,
        version: String,
        source: Option<String>,
    }
    let lock: Lock = toml::from_str(text).map_err(|e| format!("invalid Cargo.lock: {e}"))?;
    Ok(lock
        .package
        .into_iter()
        .filter(|p| p.source.as_deref().is_some_and(is_crates_io_source))
        .map(|p| Found::new(Ecosystem::CratesIo, &p.name, &p.version))
        .collect())
}

fn is_crates_io_source(s: &str) -> bool {
    s.starts_with("registry+") || s.starts_with("sparse+") || s == "crates.io" || s == "registry"
}

fn parse_npm_lock(data: &[u8]) -> Result<Vec<Found>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| format!("invalid package-lock.json: {e}"))?;
    let mut out = Vec::new();
    if let Some(pkgs) = v["packages"].as_object() {
        for (path, p) in pkgs {
            if path.is_empty() || p["link"].as_bool() == Some(true) {
                continue;
            }
            let name = p["name"].as_str().map(str::to_string).or_else(|| {
                path.rfind("node_modules/")
                    .map(|i| path[i + "node_modules/".len()..].to_string())
            });
            if let (Some(name), Some(version)) = (name, p["version"].as_str()) {
                out.push(Found::new(Ecosystem::Npm, &name, version));
            }
        }
    } else if let Some(deps) = v["dependencies"].as_object() {
        // lockfile v1: nested `dependencies` maps.
        let mut stack: Vec<&serde_json::Map<String, serde_json::Value>> = vec![deps];
        while let Some(map) = stack.pop() {
            for (name, d) in map {
                if let Some(version) = d["version"].as_str() {
                    out.push(Found::new(Ecosystem::Npm, name, version));
                }
                if let Some(nested) = d["dependencies"].as_object() {
                    stack.push(nested);
                }
            }
        }
    }
    Ok(out)
}

fn parse_python_metadata(text: &str) -> Option<Found> {
    let (mut name, mut version) = (None, None);
    for line in text.lines() {
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("Name:") {
            name = Some(v.trim());
        } else if let Some(v) = line.strip_prefix("Version:") {
            version = Some(v.trim());
        }
    }
    Some(Found::new(Ecosystem::PyPI, name?, version?))
}

fn parse_requirements(text: &str) -> Vec<Found> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.split(';').next()?.trim();
            let (name, version) = line.split_once("==")?;
            let name = name.split('[').next()?.trim();
            let version = version.split_whitespace().next()?.trim_start_matches('=');
            if name.is_empty() || version.is_empty() || version.contains('*') {
                return None;
            }
            Some(Found::new(Ecosystem::PyPI, name, version))
        })
        .collect()
}

fn parse_os_release(text: &str) -> Option<Distro> {
    let mut id = None;
    let mut version_id = String::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().trim_matches('"').trim_matches('\'');
            match k.trim() {
                "ID" => id = Some(v.to_string()),
                "VERSION_ID" => version_id = v.to_string(),
                _ => {}
            }
        }
    }
    Some(Distro {
        id: id?,
        version_id,
    })
}

/// Reads the `.dep-v0` section that cargo-auditable embeds: zlib-compressed JSON.
fn parse_auditable(data: &[u8]) -> Result<Vec<Found>, String> {
    use object::{Object, ObjectSection};
    let file = match object::File::parse(data) {
        Ok(f) => f,
        Err(_) => return Ok(Vec::new()),
    };
    let Some(section) = file.section_by_name(".dep-v0") else {
        return Ok(Vec::new());
    };
    let compressed = section
        .data()
        .map_err(|e| format!("unreadable .dep-v0 section: {e}"))?;
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(compressed)
        .take(8 << 20)
        .read_to_end(&mut json)
        .map_err(|e| format!("cannot inflate .dep-v0 section: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&json).map_err(|e| format!("invalid .dep-v0 json: {e}"))?;
    Ok(v["packages"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["source"].as_str().is_some_and(is_crates_io_source))
                .filter_map(|p| {
                    Some(Found::new(
                        Ecosystem::CratesIo,
                        p["name"].as_str()?,
                        p["version"].as_str()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The characters a purl component keeps as they are: letters, digits and `.-_~`.
const PURL_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

fn purl_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, PURL_COMPONENT).to_string()
}

/// Package URL of a package.
pub fn purl(p: &Package, distro: Option<&Distro>) -> String {
    let v = purl_encode(&p.version);
    match p.ecosystem {
        Ecosystem::Debian | Ecosystem::Alpine => {
            let (ty, ns) = if p.ecosystem == Ecosystem::Debian {
                ("deb", "debian")
            } else {
                ("apk", "alpine")
            };
            let ns = distro
                .map(|d| d.id.as_str())
                .filter(|d| !d.is_empty())
                .unwrap_or(ns);
            let mut q = Vec::new();
            if let Some(d) = distro.filter(|d| !d.version_id.is_empty()) {
                q.push(format!(
                    "distro={}-{}",
                    purl_encode(&d.id),
                    purl_encode(&d.version_id)
                ));
            }
            if let Some(src) = &p.source_name {
                if src != &p.name {
                    q.push(format!("upstream={}", purl_encode(src)));
                }
            }
            let q = if q.is_empty() {
                String::new()
            } else {
                format!("?{}", q.join("&"))
            };
            format!("pkg:{ty}/{ns}/{}@{v}{q}", purl_encode(&p.name))
        }
        Ecosystem::CratesIo => format!("pkg:cargo/{}@{v}", purl_encode(&p.name)),
        Ecosystem::Npm => match p.name.strip_prefix('@').and_then(|n| n.split_once('/')) {
            Some((scope, name)) => format!(
                "pkg:npm/%40{}/{}@{v}",
                purl_encode(scope),
                purl_encode(name)
            ),
            None => format!("pkg:npm/{}@{v}", purl_encode(&p.name)),
        },
        Ecosystem::PyPI => format!("pkg:pypi/{}@{v}", purl_encode(&normalize_pypi(&p.name))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_source_with_version() {
        let f = parse_dpkg_status(
            "Package: libssl3\nStatus: install ok installed\nSource: openssl (3.0.11-1~deb12u2)\nVersion: 3.0.11-1~deb12u2+b1\nDescription: x\n more\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\nPackage: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b2\nSource: bash\n",
        );
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].source_name.as_deref(), Some("openssl"));
        assert_eq!(f[0].source_version.as_deref(), Some("3.0.11-1~deb12u2"));
        assert_eq!(f[1].name, "bash");
        assert_eq!(f[1].source_version, None);
    }

    #[test]
    fn apk_cargo_npm_python_parse() {
        let a = parse_apk_installed(
            "C:Q1x\nP:musl\nV:1.2.4-r2\no:musl\n\nP:libcrypto3\nV:3.1.4-r1\no:openssl\n",
        );
        assert_eq!(a[1].source_name.as_deref(), Some("openssl"));
        let c = parse_cargo_lock("version = 3\n[[package]]\nname = \"me\"\nversion = \"0.1.0\"\n\n[[package]]\nname = \"smallvec\"\nversion = \"1.6.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n").unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].name, "smallvec");
        let n = parse_npm_lock(br#"{"lockfileVersion":3,"packages":{"":{"name":"app"},"node_modules/lodash":{"version":"4.17.20"},"node_modules/@babel/core":{"version":"7.0.0"},"node_modules/a/node_modules/minimist":{"version":"1.2.0"}}}"#).unwrap();
        let mut names: Vec<_> = n.iter().map(|f| f.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["@babel/core", "lodash", "minimist"]);
        let p = parse_python_metadata(
            "Metadata-Version: 2.1\nName: Jinja2\nVersion: 2.11.2\n\nName: ignored\n",
        )
        .unwrap();
        assert_eq!((p.name.as_str(), p.version.as_str()), ("Jinja2", "2.11.2"));
        let r = parse_requirements("# pins\nrequests[socks]==2.19.0 ; python_version > '3'\nflask>=1.0\nurllib3==1.24.1  # old\n");
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].version, "1.24.1");
        assert!(parse_cargo_lock("not toml [").is_err());
        assert!(parse_npm_lock(b"{").is_err());
    }

    #[test]
    fn purls_are_encoded() {
        let mut p = Package {
            ecosystem: Ecosystem::Debian,
            name: "libssl3".into(),
            version: "1:3.0.11-1~deb12u2".into(),
            source_name: Some("openssl".into()),
            source_version: None,
            purl: String::new(),
            locations: vec![],
            layer: String::new(),
        };
        let d = Distro {
            id: "debian".into(),
            version_id: "12".into(),
        };
        assert_eq!(
            purl(&p, Some(&d)),
            "pkg:deb/debian/libssl3@1%3A3.0.11-1~deb12u2?distro=debian-12&upstream=openssl"
        );
        p.ecosystem = Ecosystem::Npm;
        p.name = "@babel/core".into();
        p.version = "7.0.0".into();
        assert_eq!(purl(&p, None), "pkg:npm/%40babel/core@7.0.0");
        p.ecosystem = Ecosystem::PyPI;
        p.name = "zope.interface".into();
        p.version = "1.0+ubuntu 1/é".into();
        assert_eq!(
            purl(&p, None),
            "pkg:pypi/zope-interface@1.0%2Bubuntu%201%2F%C3%A9"
        );
    }
}
