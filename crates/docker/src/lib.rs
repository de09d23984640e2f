//! Docker provider over bollard: golden images, hardened containers, health probes
