//! The catalogue travels with the repository: every run stores an encrypted copy of the
//! catalogue in force, with the non-secret files its config jobs name, in each of the job's
//! repositories (docs/design.md, repository format):
//!
//! ```text
//! catalogue/<sha256>.toml.age   the bundle (JSON: catalogue text + named files), age ⟶ zstd
//! catalogue/<sha256>.json       its index: plaintext, written LAST, create-only
//! ```
//!
//! `<sha256>` is the hash of the bundle's plaintext, so an unchanged catalogue is not written
//! again. Secrets (password, identity, credentials and webhook secret files) are never copied;
//! the catalogue names their paths only. [`newest`] reads the copies back (for `bootstrap`).

use crate::catalogue::{Catalogue, JobSpec, SinkKind};
use crate::pipeline::{Identities, PipelineSettings};
use crate::repository::{ObjectRecord, Repository, StoreError};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The key prefix of the copies.
pub const PREFIX: &str = "catalogue/";
/// Named files larger than this are left out (listed as skipped).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// What is encrypted: the catalogue text and the non-secret files it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Bundle {
    /// Where the catalogue was read from.
    pub catalogue_path: String,
    pub catalogue: String,
    pub files: Vec<BundleFile>,
    /// Named files not copied, with the reason (secret, too large, unreadable).
    #[serde(default)]
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BundleFile {
    pub path: String,
    pub mode: u32,
    pub content_hex: String,
}

/// `catalogue/<sha256>.json`: when and where from, and the encrypted object's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CopyIndex {
    pub sha256: String,
    pub written_at: DateTime<Utc>,
    pub host: String,
    pub software: String,
    /// The repository's name in the catalogue (so `bootstrap` can point it at the URL given).
    pub repository: String,
    pub object: ObjectRecord,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("cannot read the catalogue {}: {source}", .path.display())]
    ReadCatalogue {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("repository `{repository}`: {source}")]
    Store {
        repository: String,
        #[source]
        source: StoreError,
    },
    #[error("repository `{repository}`: {source}")]
    Pipeline {
        repository: String,
        #[source]
        source: crate::pipeline::PipelineError,
    },
    #[error("repository `{repository}`: catalogue copy {key} is malformed: {reason}")]
    Malformed {
        repository: String,
        key: String,
        reason: String,
    },
    #[error(
        "repository `{repository}` holds no catalogue copy (under {PREFIX}): it was written by a \
         version before 0.9, or no run has finished yet"
    )]
    Empty { repository: String },
}

impl crate::error::Classify for CopyError {
    fn retry(&self) -> crate::error::Retry {
        match self {
            CopyError::Store { source, .. } => source.retry(),
            _ => crate::error::Retry::Permanent,
        }
    }
}

/// The secret files the catalogue names (never copied).
pub fn secret_paths(catalogue: &Catalogue) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    if let Some(pg) = &catalogue.postgres
        && let Some(p) = &pg.password_file
    {
        out.insert(p.clone());
    }
    if let Some(p) = &catalogue.encryption.identity_file {
        out.insert(p.clone());
    }
    for r in &catalogue.repositories {
        if let Some(p) = &r.credentials_file {
            out.insert(p.clone());
        }
    }
    for a in &catalogue.alerts {
        if let SinkKind::Webhook {
            secret_file: Some(p),
            ..
        } = &a.kind
        {
            out.insert(p.clone());
        }
    }
    let canonical: Vec<PathBuf> = out
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    out.extend(canonical);
    out
}

/// Reads the catalogue file and the non-secret files its config jobs name.
pub fn bundle(catalogue: &Catalogue) -> Result<Bundle, CopyError> {
    use std::os::unix::fs::PermissionsExt;
    let text =
        std::fs::read_to_string(&catalogue.source).map_err(|source| CopyError::ReadCatalogue {
            path: catalogue.source.clone(),
            source,
        })?;
    let secrets = secret_paths(catalogue);
    let mut named: BTreeSet<PathBuf> = BTreeSet::new();
    for job in &catalogue.jobs {
        if let JobSpec::Config(c) = &job.spec {
            named.extend(c.paths.iter().map(PathBuf::from));
        }
    }
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for path in named {
        let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if secrets.contains(&path) || secrets.contains(&canonical) {
            skipped.push(format!("{}: a secret (path kept only)", path.display()));
            continue;
        }
        match std::fs::metadata(&path) {
            Ok(m) if !m.is_file() => {
                skipped.push(format!("{}: not a regular file", path.display()))
            }
            Ok(m) if m.len() > MAX_FILE_BYTES => skipped.push(format!(
                "{}: larger than {MAX_FILE_BYTES} bytes (in the config job's backups)",
                path.display()
            )),
            Ok(m) => match std::fs::read(&path) {
                Ok(bytes) => files.push(BundleFile {
                    path: path.display().to_string(),
                    mode: m.permissions().mode() & 0o7777,
                    content_hex: hex::encode(bytes),
                }),
                Err(e) => skipped.push(format!("{}: {e}", path.display())),
            },
            Err(e) => skipped.push(format!("{}: {e}", path.display())),
        }
    }
    Ok(Bundle {
        catalogue_path: catalogue.source.display().to_string(),
        catalogue: text,
        files,
        skipped,
    })
}

/// The bundle's plaintext bytes and their SHA-256 (hex).
pub fn encode(bundle: &Bundle) -> (Vec<u8>, String) {
    let bytes = serde_json::to_vec(bundle).unwrap_or_default();
    let hash = hex::encode(Sha256::digest(&bytes));
    (bytes, hash)
}

/// Stores the copy into `repository` unless a copy of the same content is there. Returns
/// whether it wrote one.
pub async fn store(
    repository: &Repository,
    bundle: &Bundle,
    pipeline: &PipelineSettings,
) -> Result<bool, CopyError> {
    let (bytes, sha) = encode(bundle);
    let index_key = format!("{PREFIX}{sha}.json");
    let object_key = format!("{PREFIX}{sha}.toml.age");
    let store_err = |source| CopyError::Store {
        repository: repository.name.clone(),
        source,
    };
    if repository
        .store
        .head(&index_key)
        .await
        .map_err(store_err)?
        .is_some()
    {
        return Ok(false);
    }
    // A leftover object of an interrupted copy (no index): the index names a fresh object.
    let object_key = match repository
        .store
        .head(&object_key)
        .await
        .map_err(store_err)?
    {
        None => object_key,
        Some(_) => format!(
            "{PREFIX}{sha}-{}.toml.age",
            Utc::now().format("%Y%m%dT%H%M%S%.6fZ")
        ),
    };
    let object =
        crate::pipeline::store_bytes(&repository.store, &object_key, bytes.into(), pipeline)
            .await
            .map_err(|source| CopyError::Pipeline {
                repository: repository.name.clone(),
                source,
            })?;
    let index = CopyIndex {
        sha256: sha,
        written_at: Utc::now(),
        host: super::provenance::host_name(),
        software: concat!("bdc-backup ", env!("CARGO_PKG_VERSION")).into(),
        repository: repository.name.clone(),
        object,
    };
    let mut json = serde_json::to_vec_pretty(&index).unwrap_or_default();
    json.push(b'\n');
    match repository
        .store
        .put_create(&index_key, Bytes::from(json))
        .await
    {
        Ok(()) | Err(StoreError::AlreadyExists { .. }) => Ok(true),
        Err(e) => Err(store_err(e)),
    }
}

/// Writes the copy into every repository of the job; each failure is one warning (a copy that
/// cannot be written never fails the backup).
pub async fn store_for_job(catalogue: &Catalogue, job: &crate::catalogue::Job) -> Vec<String> {
    let mut warnings = Vec::new();
    if job.repositories.is_empty() {
        return warnings;
    }
    let bundle = match bundle(catalogue) {
        Ok(b) => b,
        Err(e) => {
            return vec![format!(
                "catalogue copy: {}",
                crate::error::error_chain_of(&e)
            )];
        }
    };
    let pipeline = match PipelineSettings::for_job(catalogue, job) {
        Ok(p) => p,
        Err(e) => return vec![format!("catalogue copy: {e}")],
    };
    for name in &job.repositories {
        let Some(settings) = catalogue.repository(name) else {
            continue;
        };
        let result = match Repository::open(settings) {
            Ok(repo) => store(&repo, &bundle, &pipeline).await,
            Err(e) => {
                warnings.push(format!("catalogue copy into `{name}`: {e}"));
                continue;
            }
        };
        match result {
            Ok(true) => {
                tracing::info!(job = %job.name, repository = %name, "catalogue copy stored")
            }
            Ok(false) => {}
            Err(e) => warnings.push(format!(
                "catalogue copy: {}",
                crate::error::error_chain_of(&e)
            )),
        }
    }
    warnings
}

/// Every copy's index in the repository, oldest first.
pub async fn list(repository: &Repository) -> Result<Vec<CopyIndex>, CopyError> {
    let metas = repository
        .store
        .list(PREFIX)
        .await
        .map_err(|source| CopyError::Store {
            repository: repository.name.clone(),
            source,
        })?;
    let mut out = Vec::new();
    for meta in metas.iter().filter(|m| m.key.ends_with(".json")) {
        let bytes = repository
            .store
            .get(&meta.key)
            .await
            .map_err(|source| CopyError::Store {
                repository: repository.name.clone(),
                source,
            })?;
        let index: CopyIndex =
            serde_json::from_slice(&bytes).map_err(|e| CopyError::Malformed {
                repository: repository.name.clone(),
                key: meta.key.clone(),
                reason: e.to_string(),
            })?;
        out.push(index);
    }
    out.sort_by_key(|a| a.written_at);
    Ok(out)
}

/// The newest copy, decrypted and checked against its hash.
pub async fn newest(
    repository: &Repository,
    identities: &Identities,
) -> Result<(CopyIndex, Bundle), CopyError> {
    let index = list(repository)
        .await?
        .pop()
        .ok_or_else(|| CopyError::Empty {
            repository: repository.name.clone(),
        })?;
    let bytes = crate::pipeline::load_bytes(&repository.store, &index.object, identities)
        .await
        .map_err(|source| CopyError::Pipeline {
            repository: repository.name.clone(),
            source,
        })?;
    let bundle: Bundle = serde_json::from_slice(&bytes).map_err(|e| CopyError::Malformed {
        repository: repository.name.clone(),
        key: index.object.key.clone(),
        reason: e.to_string(),
    })?;
    if encode(&bundle).1 != index.sha256 {
        return Err(CopyError::Malformed {
            repository: repository.name.clone(),
            key: index.object.key.clone(),
            reason: "its content does not match the hash in its index".into(),
        });
    }
    Ok((index, bundle))
}

/// Writes the bundle's named files beneath `dir` at their absolute paths (`dir/etc/...`).
pub fn write_files(bundle: &Bundle, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    let mut written = Vec::new();
    for f in &bundle.files {
        let rel = Path::new(&f.path)
            .strip_prefix("/")
            .unwrap_or(Path::new(&f.path));
        let dest = dir.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let bytes = hex::decode(&f.content_hex)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        std::fs::write(&dest, bytes)?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(f.mode))?;
        written.push(dest);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_are_deduplicated_secret_free_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let identity = age::x25519::Identity::generate();
        let key = d.join("restore.key");
        {
            use age::secrecy::ExposeSecret;
            std::fs::write(&key, format!("{}\n", identity.to_string().expose_secret())).unwrap();
        }
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::fs::write(d.join("hba.conf"), "local all all trust\n").unwrap();
        let text = format!(
            r#"
[encryption]
recipients = ["{recipient}"]
identity-file = "{key}"

[repository.local]
url = "file://{d}/repo"

[[job]]
name = "etc"
kind = "config"
paths = ["{d}/hba.conf", "{key}"]
schedule = "0 1 * * *"
repositories = ["local"]
"#,
            recipient = identity.to_public(),
            key = key.display(),
            d = d.display()
        );
        let path = d.join("catalogue.toml");
        std::fs::write(&path, &text).unwrap();
        let catalogue = crate::catalogue::parse_str(&text, &path, &[]).unwrap();
        let b = bundle(&catalogue).unwrap();
        assert_eq!(b.catalogue, text);
        assert_eq!(b.files.len(), 1, "{b:?}");
        assert!(b.files[0].path.ends_with("hba.conf"));
        assert!(b.skipped[0].contains("a secret"), "{:?}", b.skipped);
        let job = catalogue.job("etc").unwrap();
        let repo = Repository::open(catalogue.repository("local").unwrap()).unwrap();
        let pipeline = PipelineSettings::for_job(&catalogue, job).unwrap();
        let ids = Identities::from_keys(vec![identity.clone()]);
        assert!(matches!(
            newest(&repo, &ids).await,
            Err(CopyError::Empty { .. })
        ));
        assert!(store(&repo, &b, &pipeline).await.unwrap());
        assert!(
            !store(&repo, &b, &pipeline).await.unwrap(),
            "unchanged: not rewritten"
        );
        assert!(store_for_job(&catalogue, job).await.is_empty());
        assert_eq!(list(&repo).await.unwrap().len(), 1);
        let (index, got) = newest(&repo, &ids).await.unwrap();
        assert_eq!(got, b);
        assert_eq!(index.repository, "local");
        // Nothing secret in the stored bytes' plaintext, and another key cannot open it.
        let other = Identities::from_keys(vec![age::x25519::Identity::generate()]);
        assert!(newest(&repo, &other).await.is_err());
        // A changed catalogue is a second copy, and the newest.
        std::fs::write(&path, format!("{text}\n# changed\n")).unwrap();
        assert!(
            store(&repo, &bundle(&catalogue).unwrap(), &pipeline)
                .await
                .unwrap()
        );
        let (_, got) = newest(&repo, &ids).await.unwrap();
        assert!(got.catalogue.ends_with("# changed\n"));
        let out = d.join("out");
        let written = write_files(&got, &out).unwrap();
        assert_eq!(written.len(), 1);
        assert_eq!(
            std::fs::read_to_string(&written[0]).unwrap(),
            "local all all trust\n"
        );
    }
}
