//! Usage: bytes stored per job and repository, weekly growth and projections.
