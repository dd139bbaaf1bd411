//! postgres: restore

#[derive(Debug, Clone)]
pub struct RestoreDatabaseOptions {
    pub job: String,
    pub database: Option<String>,
    pub backup: Option<String>,
    pub into: String,
    pub url: Option<String>,
    pub tables: Vec<String>,
    pub create: bool,
    pub jobs: Option<u32>,
    pub roles: bool,
    pub repository: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {}

impl std::fmt::Display for RestoreReport {
    fn fmt(&self, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("restore failed")]
pub struct RestoreError;

pub async fn restore_database(
    _catalogue: &crate::catalogue::Catalogue,
    _options: RestoreDatabaseOptions,
) -> Result<RestoreReport, RestoreError> {
    todo!("pg helper")
}
