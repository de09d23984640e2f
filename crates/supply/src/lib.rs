//! Image scanning for cutover: package inventory, CycloneDX SBOM, OSV vulnerability matching,
//! secret detection and the release gate with expiring exceptions. Pure Rust over image
//! tarballs as written by `docker save`; no network.

pub mod error;
pub mod image;
pub mod inventory;
pub mod osv;
pub mod synth;
pub mod version;

pub use error::{Result, SupplyError};
pub use image::{FileFate, FileMeta, Image, ImageConfig, ImageReader, LayerInfo, Limits};
pub use inventory::{inventory, Distro, Inventory, InventoryCollector, Package};
pub use version::Ecosystem;
