//! sled-backed state store: plans, journal, releases, leases, retirements
