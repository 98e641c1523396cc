//! `portcullis db`, `portcullis revoke`, `portcullis unrevoke`, `portcullis revocations`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use portcullis_core::RevocationKind;

use super::{Failure, Format};
use crate::revocation::{ListFilter, Record, Store, StoreError, file::FileStore, pg::PgStore};

/// Where revocations are kept: Postgres when a URL is given, else the file.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Postgres connection string (URL or key=value). Without one, the revocations file is
    /// used. The value is never printed.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The revocations file (JSON lines) used without a database: the embedded default.
    #[arg(long, value_name = "FILE", default_value = "revocations.jsonl")]
    pub revocations_file: PathBuf,
}

impl StoreArgs {
    /// The store these arguments name.
    pub fn store(&self) -> Result<Store, Failure> {
        match self.database_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => PgStore::new(url).map(Store::Postgres).map_err(|e| store_failure(&e)),
            None => Ok(Store::File(FileStore::new(&self.revocations_file))),
        }
    }
}

fn store_failure(e: &StoreError) -> Failure {
    Failure::msg(e.code(), e)
}

fn parse_kind(s: &str) -> Result<RevocationKind, String> {
    RevocationKind::from_code(s).ok_or_else(|| "expected jti, service-token, api-key or subject".into())
}

/// `portcullis db ...`
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create or upgrade the revocation schema. Idempotent; safe to run from several hosts.
    Migrate {
        /// Postgres connection string.
        #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
        database_url: String,
    },
}

/// `portcullis revoke` / `unrevoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// jti, service-token, api-key or subject.
    #[arg(value_parser = parse_kind)]
    pub kind: RevocationKind,
    /// The token id, API key id or subject.
    pub id: String,
    /// Why (kept with the entry).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// The tenant the entry belongs to.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Subjects: revoke credentials issued at or before this Unix time. Default: now.
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub issued_before: Option<i64>,
    /// After this Unix time every targeted credential has expired; `prune` may then delete it.
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub expires_at: Option<i64>,
    /// Who is revoking. Default: `cli:$USER`.
    #[arg(long)]
    pub actor: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `portcullis unrevoke`.
#[derive(Debug, Args)]
pub struct UnrevokeArgs {
    /// jti, service-token, api-key or subject.
    #[arg(value_parser = parse_kind)]
    pub kind: RevocationKind,
    /// The token id, API key id or subject.
    pub id: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `portcullis revocations ...`
#[derive(Debug, Subcommand)]
pub enum RevocationsCommand {
    /// List revocations, newest first.
    List {
        /// Only this kind.
        #[arg(long, value_parser = parse_kind)]
        kind: Option<RevocationKind>,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete entries whose expiry has passed (and, in Postgres, change-log rows older than a
    /// week). Every runtime sees each deletion.
    Prune {
        /// The current time (Unix seconds). Default: the system clock.
        #[arg(long)]
        now: Option<i64>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revocations file only: set aside the lines that are not valid records (appended to
    /// `<file>.rejected` with their line numbers and errors) and rewrite the file with the rest,
    /// so a running sidecar accepts it again.
    Repair {
        /// The revocations file.
        #[arg(long, value_name = "FILE", default_value = "revocations.jsonl")]
        revocations_file: PathBuf,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Failure::new("runtime", e))
}

/// Runs `db migrate`.
pub fn db(cmd: DbCommand) -> Result<ExitCode, Failure> {
    let DbCommand::Migrate { database_url } = cmd;
    let store = PgStore::new(&database_url).map_err(|e| store_failure(&e))?;
    let applied = runtime()?.block_on(store.migrate()).map_err(|e| store_failure(&e))?;
    let applied: Vec<_> = applied.iter().map(|(v, name)| serde_json::json!({ "version": v, "name": name })).collect();
    let out = serde_json::json!({
        "store": store.describe(),
        "applied": applied,
        "version": crate::revocation::pg::latest_version(),
    });
    outln!("{out}")?;
    Ok(ExitCode::SUCCESS)
}

fn default_actor() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()))
}

/// Runs `revoke`.
pub fn revoke(args: RevokeArgs) -> Result<ExitCode, Failure> {
    let store = args.store.store()?;
    let now = crate::unix_now();
    let mut r = Record::new(args.kind, args.id, args.actor.unwrap_or_else(default_actor), now);
    if args.kind == RevocationKind::Subject {
        r.issued_before = Some(args.issued_before.unwrap_or(now));
    } else if args.issued_before.is_some() {
        return Err(Failure::msg("revocation_invalid", "--issued-before applies to subject revocations only"));
    }
    r.tenant = args.tenant;
    r.reason = args.reason;
    r.expires_at = args.expires_at;
    let changed = runtime()?.block_on(store.revoke(&r)).map_err(|e| store_failure(&e))?;
    let out = serde_json::json!({ "changed": changed, "store": store.describe(), "revocation": r });
    outln!("{out}")?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `unrevoke`. Exit 1 when there was nothing to undo.
pub fn unrevoke(args: UnrevokeArgs) -> Result<ExitCode, Failure> {
    let store = args.store.store()?;
    let changed = runtime()?.block_on(store.unrevoke(args.kind, &args.id)).map_err(|e| store_failure(&e))?;
    outln!("{}", serde_json::json!({ "changed": changed, "store": store.describe() }))?;
    Ok(if changed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Runs `revocations ...`.
pub fn revocations(cmd: RevocationsCommand) -> Result<ExitCode, Failure> {
    match cmd {
        RevocationsCommand::List { kind, tenant, limit, format, store } => {
            let store = store.store()?;
            let filter = ListFilter { kind, tenant, limit: Some(limit) };
            let records = runtime()?.block_on(store.list(&filter)).map_err(|e| store_failure(&e))?;
            match format {
                Format::Json => {
                    outln!("{}", serde_json::json!({ "store": store.describe(), "revocations": records }))?;
                }
                Format::Text => {
                    for r in &records {
                        let before = r.issued_before.map(|b| format!(" issued_before={b}")).unwrap_or_default();
                        let tenant = r.tenant.as_deref().map(|t| format!(" tenant={t}")).unwrap_or_default();
                        outln!(
                            "{} {}{before}{tenant} created_at={} actor={} reason={:?}",
                            r.kind,
                            r.id,
                            r.created_at,
                            r.actor,
                            r.reason
                        )?;
                    }
                    outln!("{} revocation(s) in {}", records.len(), store.describe())?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RevocationsCommand::Prune { now, store } => {
            let store = store.store()?;
            let n =
                runtime()?.block_on(store.prune(now.unwrap_or_else(crate::unix_now))).map_err(|e| store_failure(&e))?;
            outln!("{}", serde_json::json!({ "pruned": n, "store": store.describe() }))?;
            Ok(ExitCode::SUCCESS)
        }
        RevocationsCommand::Repair { revocations_file } => {
            let store = FileStore::new(revocations_file);
            let (kept, rejected) = runtime()?.block_on(store.repair()).map_err(|e| store_failure(&e))?;
            outln!("{}", serde_json::json!({ "kept": kept, "rejected": rejected, "file": store.path() }))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
