//! The permissive raw layer of the catalogue: what figment reads, before validation.
