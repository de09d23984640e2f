//! The data-plane proxy: atomic upstream swap, keep-alive, drain, persisted routes
