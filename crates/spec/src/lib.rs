//! Reads and validates deploy.toml into a Spec, with file:line:column errors
