//! Hot reload: the policy and every file it references are re-read on an interval and on
//! SIGHUP; a changed bundle becomes a new generation, or is rejected with the old one kept.
//!
//! Polling compares contents, not timestamps, so it sees editors' rename-into-place saves and
//! Kubernetes' ConfigMap symlink swaps alike, and a change to a JWKS or secret file counts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::authz::Authorizer;
use crate::policy_files::PolicyBundle;

/// Watches `path` until `shutdown` turns true.
pub async fn watch_policy(
    authz: Arc<Authorizer>,
    path: PathBuf,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    // The last content that failed, so a broken file is reported once, not every interval.
    let mut last_rejected: Option<PolicyBundle> = None;
    let mut last_read_error: Option<String> = None;
    loop {
        let forced = tokio::select! {
            () = tokio::time::sleep(interval) => false,
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
        let p = path.clone();
        let bundle = match tokio::task::spawn_blocking(move || PolicyBundle::read(&p)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                let msg = e.to_string();
                if forced || last_read_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(code = e.code, error = %msg, "cannot read the policy; the current one stays in force");
                    authz.metrics().reload_failures.inc();
                    last_read_error = Some(msg);
                }
                continue;
            }
            Err(_) => continue,
        };
        last_read_error = None;
        let current = authz.generation();
        if !forced && (*current.bundle == bundle || last_rejected.as_ref() == Some(&bundle)) {
            continue;
        }
        let a = Arc::clone(&authz);
        let candidate = bundle.clone();
        match tokio::task::spawn_blocking(move || a.reload(candidate)).await {
            Ok(Ok(id)) => {
                tracing::info!(generation = id, path = %path.display(), "policy reloaded");
                last_rejected = None;
            }
            Ok(Err(rejected)) => {
                tracing::error!(
                    code = rejected.code,
                    error = %rejected.message,
                    generation = current.id,
                    "policy reload rejected; the current generation stays in force"
                );
                last_rejected = Some(bundle);
            }
            Err(e) => tracing::error!(error = %e, "reload task failed"),
        }
    }
}
