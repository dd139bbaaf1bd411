//! What every restore shares: [`RestoreSource`] opens a job's repository, loads the identities,
//! lists and checks the job's commit records and resolves the chosen backup and its ancestor
//! chain, under one rule for all restores (`files`, `config`, `database`, `cluster`, drills):
//! a missing or unreadable ancestor of the chosen backup is an error naming the backup and the
//! repository; a malformed commit record of another backup is a warning naming its key.

mod source;

pub use source::{Chain, Choice, RestoreSource, SourceError};
