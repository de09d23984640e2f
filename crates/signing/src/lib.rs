//! Keys, DSSE/in-toto attestations (SLSA provenance, SBOM, scan verdict), verification
