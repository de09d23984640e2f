//! Image scanning: inventory, SBOM, OSV vulnerability matching, secret detection, gate
