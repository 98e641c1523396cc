//! Hot reload: the policy and every file it references are re-read on an interval and on
//! SIGHUP; a changed bundle becomes a new generation, or is rejected with the old one kept.
//!
//! Polling compares contents, not timestamps, so it sees editors' rename-into-place saves and
//! Kubernetes' ConfigMap symlink swaps alike, and a change to a JWKS or secret file counts.
//!
//! Reading has a deadline ([`READ_DEADLINE`]): a read stuck on a file that never answers (a
//! network mount) is abandoned, logged and counted, and no new read starts until it returns,
//! so SIGHUP and the next good file are still handled.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::authz::Authorizer;
use crate::policy_files::PolicyBundle;

/// Longest a policy read may take before it is abandoned.
pub const READ_DEADLINE: Duration = Duration::from_secs(10);

/// The SIGHUP stream. Installing it replaces the default action (terminate), so it is made
/// before anything else in `serve` and lives as long as the process serves.
#[cfg(unix)]
pub type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
pub type Hangups = Option<()>;

/// Installs the SIGHUP handler (see [`Hangups`]).
pub fn hangups() -> Hangups {
    #[cfg(unix)]
    return tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(|e| tracing::error!(error = %e, "cannot install the SIGHUP handler"))
        .ok();
    #[cfg(not(unix))]
    return None;
}

/// Watches `path` until `shutdown` turns true: every `interval` (`None`: only on SIGHUP) and
/// on every SIGHUP.
pub async fn watch_policy(
    authz: Arc<Authorizer>,
    path: PathBuf,
    interval: Option<Duration>,
    mut hup: Hangups,
    mut shutdown: watch::Receiver<bool>,
) {
    // The last content that failed, so a broken file is reported once, not every interval.
    let mut last_rejected: Option<PolicyBundle> = None;
    let mut last_read_error: Option<String> = None;
    // A read that outlived its deadline and has not returned yet.
    let mut stuck: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let forced = tokio::select! {
            () = async {
                match interval {
                    Some(i) => tokio::time::sleep(i).await,
                    None => std::future::pending().await,
                }
            } => false,
            _ = async {
                #[cfg(unix)]
                if let Some(h) = hup.as_mut() { h.recv().await; return; }
                std::future::pending::<()>().await;
            } => true,
            _ = shutdown.changed() => return,
        };
        if forced {
            tracing::info!(path = %path.display(), "SIGHUP: reloading the policy");
        }
        if stuck.as_ref().is_some_and(|t| !t.is_finished()) {
            if forced {
                tracing::error!(path = %path.display(), "the previous policy read has not returned; the current policy stays in force");
            }
            continue;
        }
        stuck = None;
        let p = path.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reader = tokio::task::spawn_blocking(move || {
            let _ = tx.send(PolicyBundle::read(&p));
        });
        let bundle = match tokio::time::timeout(READ_DEADLINE, rx).await {
            Ok(Ok(Ok(b))) => b,
            Ok(Ok(Err(e))) => {
                let msg = e.to_string();
                if forced || last_read_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(code = e.code(), error = %msg, "policy not reloaded; the current one stays in force");
                    authz.metrics().reload_failures.inc();
                    last_read_error = Some(msg);
                }
                continue;
            }
            Ok(Err(_)) => continue,
            Err(_) => {
                tracing::error!(path = %path.display(), deadline = ?READ_DEADLINE, "reading the policy timed out; the current one stays in force");
                authz.metrics().reload_failures.inc();
                stuck = Some(reader);
                continue;
            }
        };
        last_read_error = None;
        let current = authz.generation();
        // The generation in force also holds key sets from the network; what was read from
        // disk is unchanged when its text and every file it names are.
        let unchanged = current.bundle.text == bundle.text
            && bundle.files.iter().all(|(name, bytes)| current.bundle.files.get(name) == Some(bytes));
        if !forced && (unchanged || last_rejected.as_ref() == Some(&bundle)) {
            continue;
        }
        let a = Arc::clone(&authz);
        let candidate = bundle.clone();
        // Merged with the key sets fetched from the network; unchanged: nothing to do.
        match tokio::task::spawn_blocking(move || a.refresh(Some(candidate), forced)).await {
            Ok(Ok(None)) => last_rejected = None,
            Ok(Ok(Some(id))) => {
                tracing::info!(generation = id, path = %path.display(), "policy reloaded");
                last_rejected = None;
            }
            Ok(Err(rejected)) => {
                tracing::error!(
                    code = rejected.code(),
                    error = %rejected,
                    generation = current.id,
                    "policy reload rejected; the current generation stays in force"
                );
                last_rejected = Some(bundle);
            }
            Err(e) => tracing::error!(error = %e, "reload task failed"),
        }
    }
}
