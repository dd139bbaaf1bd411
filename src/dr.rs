//! Disaster recovery from nothing but a repository and a key (docs/design.md §13, issue 9):
//! [`provenance`] (where each backup came from, in its commit record), [`catalogue_copy`] (the
//! encrypted catalogue copies every run writes into its repositories) and [`plan`] (the DR plan
//! `bootstrap` writes and `restore all --plan` executes, with its progress file).

pub mod catalogue_copy;
pub mod plan;
pub mod provenance;
