//! Image scanning for cutover: package inventory, CycloneDX SBOM, OSV vulnerability matching,
//! secret detection and the release gate with expiring exceptions. Pure Rust over image
//! tarballs as written by `docker save`; no network.
//!
//! Typical use: [`AdvisoryDb::import`] once (then [`AdvisoryDb::save`]/[`AdvisoryDb::load`]),
//! [`scan`] an image tarball, [`evaluate`] the findings against a [`GatePolicy`] and
//! [`Exceptions`], and export with [`sbom`] and [`to_sarif`].

pub mod error;
pub mod gate;
pub mod image;
pub mod inventory;
pub mod osv;
pub mod re2;
pub mod report;
pub mod secrets;
pub mod synth;
pub mod version;

pub use error::{Result, SupplyError};
pub use gate::{evaluate, Date, Exception, Exceptions, GatePolicy, Suppressed, Verdict};
pub use image::{FileFate, FileMeta, Image, ImageConfig, ImageReader, LayerInfo, Limits};
pub use inventory::{inventory, Distro, Inventory, InventoryCollector, Package};
pub use osv::{AdvisoryDb, ImportLimits, ImportReport, Severity, VulnFinding};
pub use report::{sbom, scan, scan_image, to_sarif, Findings, ImageSummary, ScanReport, ScanStats};
pub use secrets::{RuleSet, RuleWarning, SecretFinding, SecretLocation};
pub use version::Ecosystem;
