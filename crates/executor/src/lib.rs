//! Runs saved plans: journaling, concurrency, retries, recovery, unwind
