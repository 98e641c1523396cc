//! Keys from identity providers: the key sets an issuer's `jwks_uri` or OpenID discovery names,
//! fetched over HTTPS and kept current, each becoming part of the policy generation.
//!
//! - **At start** every source is fetched (concurrently, one timeout) before the first
//!   generation is built; a source that fails leaves its issuer answering `keys_unavailable`
//!   (503) until a retry succeeds.
//! - **In the background** each source is refetched when its cache lifetime ends
//!   (`Cache-Control: max-age`, clamped to [`KeyOptions::min_refresh`] ..
//!   [`KeyOptions::max_refresh`]); a failure keeps the last good set and retries with backoff.
//! - **On an unknown `kid`** (or `keys_unavailable`) the token's issuer is refetched at once, at
//!   most once per [`KeyOptions::refetch_interval`] per issuer, and the request is decided again
//!   if new keys arrived within [`KeyOptions::refetch_wait`]; a flood of made-up `kid`s costs the
//!   provider one request per interval.
//! - A changed set becomes a new generation ([`Authorizer::refresh`]): built beside the one in
//!   force and swapped in, so in-flight checks finish on the keys they started with.
//!
//! A fetched set is kept only if it is a JWKS the core reads ([`check_remote_jwks`]): not JSON,
//! no `keys` array, duplicate `kid`s or over [`KeyOptions::max_bytes`] and the last good set
//! stays. Keys the core cannot use (another curve, a secret `oct` key) are skipped, not fatal.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use portcullis_core::{OwnedRequest, Policy, Reason, RemoteKeySource, check_remote_jwks};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::serve::authz::Authorizer;

/// How key sets are fetched and kept.
#[derive(Clone, Debug)]
pub struct KeyOptions {
    /// Longest one HTTPS request may take (connect, TLS, headers and body).
    pub timeout: Duration,
    /// Largest response accepted (a JWKS or an OpenID configuration).
    pub max_bytes: usize,
    /// Shortest cache lifetime honoured (a smaller `max-age`, `no-cache` and `no-store` count as
    /// this).
    pub min_refresh: Duration,
    /// Longest cache lifetime honoured.
    pub max_refresh: Duration,
    /// Cache lifetime when the response has no `max-age`.
    pub default_refresh: Duration,
    /// Least time between two refetches of one issuer caused by unknown `kid`s.
    pub refetch_interval: Duration,
    /// How long a request whose `kid` is unknown waits for that refetch before it is answered
    /// (the refetch goes on, for the requests after it).
    pub refetch_wait: Duration,
    /// First retry after a failure; doubles up to `max_refresh`, at most five minutes.
    pub retry_after: Duration,
    /// A PEM file of CA certificates trusted beside the system's.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for KeyOptions {
    fn default() -> Self {
        KeyOptions {
            timeout: Duration::from_secs(5),
            max_bytes: 512 << 10,
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(24 * 3600),
            default_refresh: Duration::from_secs(600),
            refetch_interval: Duration::from_secs(30),
            refetch_wait: Duration::from_secs(1),
            retry_after: Duration::from_secs(1),
            ca_file: None,
        }
    }
}

/// Labels naming an issuer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabels {
    /// The issuer (its `iss`, from the policy: bounded by the policy's size).
    pub issuer: String,
}

/// Labels of a fetch.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// The issuer.
    pub issuer: String,
    /// `ok`, `network`, `status`, `too_large` or `invalid`.
    pub result: &'static str,
}

/// The key fetcher's metrics (prefix `portcullis_jwks_`).
#[derive(Debug, Default)]
pub struct KeyMetrics {
    /// Fetches by issuer and result.
    pub fetches: Family<FetchLabels, Counter>,
    /// Unix time of the last fetch attempt, per issuer.
    pub last_fetch: Family<IssuerLabels, Gauge>,
    /// Unix time of the last successful fetch, per issuer.
    pub last_success: Family<IssuerLabels, Gauge>,
    /// 1 when the issuer's last fetch failed.
    pub failing: Family<IssuerLabels, Gauge>,
    /// Keys trusted per issuer in the generation in force.
    pub keys: Family<IssuerLabels, Gauge>,
    /// Refetches caused by an unknown `kid`.
    pub refetches: Family<IssuerLabels, Counter>,
    /// Unknown `kid`s that found a refetch too recent and were answered without one.
    pub refetches_limited: Family<IssuerLabels, Counter>,
}

impl KeyMetrics {
    /// Registers every metric under `portcullis_jwks_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("jwks");
        r.register("fetches", "Key set fetches by issuer and result", self.fetches.clone());
        r.register("last_fetch_timestamp_seconds", "When the issuer's keys were last fetched", self.last_fetch.clone());
        r.register(
            "last_success_timestamp_seconds",
            "When the issuer's keys were last fetched successfully",
            self.last_success.clone(),
        );
        r.register(
            "failing",
            "1 while the issuer's last fetch failed (its last good keys serve)",
            self.failing.clone(),
        );
        r.register("keys", "Keys trusted per issuer in the policy in force", self.keys.clone());
        r.register("refetches", "Refetches caused by an unknown kid", self.refetches.clone());
        r.register(
            "refetches_rate_limited",
            "Unknown kids answered without a refetch (one ran within the interval)",
            self.refetches_limited.clone(),
        );
    }

    fn issuer(issuer: &str) -> IssuerLabels {
        IssuerLabels { issuer: issuer.to_owned() }
    }
}

/// Why a fetch failed. Messages name the URL and the cause, never a response body.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Connecting, TLS, or reading failed, or the timeout passed.
    #[error("{0}")]
    Network(String),
    /// The server answered something other than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The response is larger than allowed.
    #[error("the response is larger than {0} bytes")]
    TooLarge(usize),
    /// The document is not what was asked for.
    #[error("{0}")]
    Invalid(String),
}

impl FetchError {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::Network(_) => "network",
            FetchError::Status(_) => "status",
            FetchError::TooLarge(_) => "too_large",
            FetchError::Invalid(_) => "invalid",
        }
    }
}

/// A fetched key set and how long it may be kept.
#[derive(Debug)]
pub struct Fetched {
    /// The JWKS document.
    pub jwks: Vec<u8>,
    /// Keys in it the core would trust.
    pub keys: usize,
    /// `max-age` of the key set's response, when it has one.
    pub max_age: Option<Duration>,
}

/// One source followed.
#[derive(Debug)]
struct Followed {
    source: RemoteKeySource,
    /// The last good set.
    held: Option<Vec<u8>>,
    due: Instant,
    failures: u32,
}

/// The sidecar's key sets from the network.
pub struct RemoteKeys {
    client: reqwest::Client,
    options: KeyOptions,
    followed: Mutex<BTreeMap<String, Followed>>,
    /// Per issuer: the time of its last `kid` refetch, behind a lock that also makes concurrent
    /// unknown `kid`s wait for one refetch instead of starting their own.
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
    /// Metrics.
    pub metrics: KeyMetrics,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys").field("options", &self.options).finish_non_exhaustive()
    }
}

impl RemoteKeys {
    /// A fetcher trusting the system's roots and `options.ca_file`.
    pub fn new(options: KeyOptions) -> anyhow::Result<RemoteKeys> {
        let roots = crate::tls::roots(options.ca_file.as_deref(), true)?;
        if roots.is_empty() {
            // A sidecar whose policy fetches nothing must still start in a container without a
            // CA bundle; a fetch there fails (and says why) instead.
            tracing::warn!("no trust root for key set fetches: the system has none and --jwks-ca-file is not set");
        }
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(crate::tls::client_config(roots)?)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::limited(3))
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(RemoteKeys {
            client,
            options,
            followed: Mutex::new(BTreeMap::new()),
            gates: Mutex::new(HashMap::new()),
            metrics: KeyMetrics::default(),
        })
    }

    /// The options in force.
    pub fn options(&self) -> &KeyOptions {
        &self.options
    }

    /// The last good key set of every source, by URL (what [`Bundle::with_remote_keys`]
    /// takes).
    ///
    /// [`Bundle::with_remote_keys`]: portcullis_adapter::bundle::Bundle::with_remote_keys
    pub fn documents(&self) -> BTreeMap<String, Vec<u8>> {
        self.lock().iter().filter_map(|(url, f)| Some((url.clone(), f.held.clone()?))).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Followed>> {
        self.followed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows exactly `sources`: a new one is due now, one the policy no longer names is
    /// dropped with its keys.
    pub fn track(&self, sources: &[RemoteKeySource]) {
        let mut followed = self.lock();
        followed.retain(|url, f| sources.iter().any(|s| &s.url == url && *s == f.source));
        for s in sources {
            followed.entry(s.url.clone()).or_insert_with(|| Followed {
                source: s.clone(),
                held: None,
                due: Instant::now(),
                failures: 0,
            });
        }
    }

    /// Fetches every source that is due (all at once); true when a held set changed.
    pub async fn fetch_due(&self) -> bool {
        let now = Instant::now();
        let due: Vec<RemoteKeySource> =
            self.lock().values().filter(|f| f.due <= now).map(|f| f.source.clone()).collect();
        self.fetch_each(due).await
    }

    /// Fetches every source of `issuer` now, whatever their schedule; true when a held set
    /// changed.
    pub async fn fetch_issuer(&self, issuer: &str) -> bool {
        let sources: Vec<RemoteKeySource> =
            self.lock().values().filter(|f| f.source.issuer == issuer).map(|f| f.source.clone()).collect();
        self.fetch_each(sources).await
    }

    async fn fetch_each(&self, sources: Vec<RemoteKeySource>) -> bool {
        let results = futures_util::future::join_all(sources.iter().map(|s| self.fetch(s))).await;
        let mut changed = false;
        for (source, result) in sources.iter().zip(results) {
            changed |= self.record(source, result);
        }
        changed
    }

    /// Keeps a fetch's result: a good set replaces the held one and is kept for its lifetime;
    /// a failure keeps the held one and retries with backoff. True when the held set changed.
    fn record(&self, source: &RemoteKeySource, result: Result<Fetched, FetchError>) -> bool {
        let labels = KeyMetrics::issuer(&source.issuer);
        let now = crate::unix_now();
        self.metrics.last_fetch.get_or_create(&labels).set(now);
        let result_label = result.as_ref().err().map_or("ok", FetchError::label);
        self.metrics.fetches.get_or_create(&FetchLabels { issuer: source.issuer.clone(), result: result_label }).inc();
        let mut followed = self.lock();
        // The policy may have dropped the source while it was fetched.
        let Some(f) = followed.get_mut(&source.url).filter(|f| f.source == *source) else {
            return false;
        };
        match result {
            Ok(fetched) => {
                self.metrics.last_success.get_or_create(&labels).set(now);
                self.metrics.failing.get_or_create(&labels).set(0);
                let o = &self.options;
                let lifetime = fetched.max_age.unwrap_or(o.default_refresh).clamp(o.min_refresh, o.max_refresh);
                f.due = Instant::now() + lifetime;
                f.failures = 0;
                let changed = f.held.as_deref() != Some(&fetched.jwks[..]);
                if changed {
                    tracing::info!(issuer = %source.issuer, url = %source.url, keys = fetched.keys, refresh_in = ?lifetime, "fetched a new key set");
                }
                f.held = Some(fetched.jwks);
                changed
            }
            Err(e) => {
                self.metrics.failing.get_or_create(&labels).set(1);
                f.failures = f.failures.saturating_add(1);
                let backoff = self
                    .options
                    .retry_after
                    .saturating_mul(1 << (f.failures - 1).min(16))
                    .min(self.options.max_refresh)
                    .min(Duration::from_secs(300));
                f.due = Instant::now() + backoff;
                tracing::warn!(
                    issuer = %source.issuer,
                    url = %source.url,
                    error = %e,
                    kept = f.held.is_some(),
                    retry_in = ?backoff,
                    "cannot fetch the key set; the last good keys stay in force"
                );
                false
            }
        }
    }

    /// The earliest time a source is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.lock().values().map(|f| f.due).min()
    }

    /// Sets the key gauges from the generation in force.
    pub fn observe(&self, policy: &Policy) {
        for s in policy.key_status().into_iter().filter(|s| s.remote_sources > 0) {
            self.metrics
                .keys
                .get_or_create(&KeyMetrics::issuer(s.issuer))
                .set(i64::try_from(s.keys).unwrap_or(i64::MAX));
        }
    }

    /// Fetches one source: the JWKS, through the OpenID configuration for discovery.
    pub async fn fetch(&self, source: &RemoteKeySource) -> Result<Fetched, FetchError> {
        let jwks_url = if source.discovery {
            let (body, _) = self.get(&source.url).await?;
            discovered_jwks_uri(&body, &source.issuer)?
        } else {
            source.url.clone()
        };
        let (jwks, max_age) = self.get(&jwks_url).await?;
        let keys = check_remote_jwks(&jwks).map_err(|e| FetchError::Invalid(format!("not a usable JWKS: {e}")))?;
        Ok(Fetched { jwks, keys, max_age })
    }

    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        let mut resp = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| FetchError::Network(crate::error::chain(&e)))?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        let max = self.options.max_bytes;
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(FetchError::TooLarge(max));
        }
        let max_age = max_age(resp.headers());
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| FetchError::Network(crate::error::chain(&e)))? {
            if body.len() + chunk.len() > max {
                return Err(FetchError::TooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }

    fn gate(&self, issuer: &str) -> Arc<tokio::sync::Mutex<Option<Instant>>> {
        let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(gates.entry(issuer.to_owned()).or_default())
    }
}

/// The `jwks_uri` of an OpenID configuration whose `issuer` is exactly `issuer` (OpenID
/// Connect Discovery §4.3: a mismatch means the document is not this issuer's).
fn discovered_jwks_uri(body: &[u8], issuer: &str) -> Result<String, FetchError> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| FetchError::Invalid("the OpenID configuration is not JSON".into()))?;
    match doc.get("issuer").and_then(serde_json::Value::as_str) {
        Some(i) if i == issuer => {}
        Some(_) => return Err(FetchError::Invalid("the OpenID configuration names another issuer".into())),
        None => return Err(FetchError::Invalid("the OpenID configuration has no `issuer`".into())),
    }
    match doc.get("jwks_uri").and_then(serde_json::Value::as_str) {
        Some(u) if u.starts_with("https://") => Ok(u.to_owned()),
        Some(_) => Err(FetchError::Invalid("the OpenID configuration's `jwks_uri` is not https://".into())),
        None => Err(FetchError::Invalid("the OpenID configuration has no `jwks_uri`".into())),
    }
}

/// The cache lifetime a response allows: `max-age` (RFC 9111 §5.2.2.1), and zero for
/// `no-cache` / `no-store` (the caller's minimum applies). Hand-written: the HTTP caching crates
/// model a whole cache; this is one directive.
fn max_age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let mut found = None;
    for value in headers.get_all(reqwest::header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',').map(str::trim) {
            let (name, arg) = directive.split_once('=').unwrap_or((directive, ""));
            if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
                return Some(Duration::ZERO);
            }
            if name.eq_ignore_ascii_case("max-age") {
                found = arg.trim_matches('"').parse::<u64>().ok().map(Duration::from_secs);
            }
        }
    }
    found
}

/// Fetches every source of `bundle` before the first generation is built, within one timeout.
pub async fn fetch_at_start(keys: &RemoteKeys, bundle: &crate::policy_files::PolicyBundle) {
    let Ok(sources) = bundle.remote_key_sources() else { return };
    if sources.is_empty() {
        return;
    }
    keys.track(&sources);
    keys.fetch_due().await;
}

/// Keeps the key sets current until `stop`: follows the sources of the generation in force,
/// fetches each when due, and builds a new generation when a set changed.
pub async fn maintain(authz: Arc<Authorizer>, keys: Arc<RemoteKeys>, mut stop: watch::Receiver<bool>) {
    let mut seen = 0;
    loop {
        let generation = authz.generation();
        if generation.id != seen {
            seen = generation.id;
            if let Ok(sources) = generation.bundle.remote_key_sources() {
                keys.track(&sources);
            }
            keys.observe(&generation.policy);
        }
        if keys.fetch_due().await {
            refresh(&authz).await;
        }
        // Wakes at least every second to notice a reload that names new sources.
        let wait = keys
            .next_due()
            .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(Instant::now()))
            .min(Duration::from_secs(1));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Builds a generation with the key sets now held (blocking work, off the runtime).
async fn refresh(authz: &Arc<Authorizer>) {
    let a = Arc::clone(authz);
    match tokio::task::spawn_blocking(move || a.refresh(None, false)).await {
        Ok(Ok(Some(id))) => {
            tracing::info!(generation = id, "new keys in force");
            if let Some(keys) = authz.remote_keys() {
                keys.observe(&authz.generation().policy);
            }
        }
        Ok(Ok(None)) => {}
        Ok(Err(rejected)) => {
            tracing::error!(code = rejected.code(), error = %rejected, "new keys rejected; the current generation stays in force");
        }
        Err(e) => tracing::error!(error = %e, "key refresh task failed"),
    }
}

/// Decides `req`; after `unknown_kid` or `keys_unavailable` for an issuer with network
/// sources, refetches that issuer's keys (at most once per interval) and decides again if new
/// keys came in time. Every other decision is returned as it is.
pub async fn check(authz: &Arc<Authorizer>, req: &OwnedRequest, api: &'static str) -> portcullis_core::Decision {
    let (decision, generation) = authz.check_pinned(req, api);
    if !matches!(decision.reason, Reason::UnknownKid | Reason::KeysUnavailable) {
        return decision;
    }
    let Some(keys) = authz.remote_keys() else { return decision };
    let issuer = req.with_request(|r| generation.policy.token_issuer(r).map(str::to_owned));
    let Some(issuer) =
        issuer.filter(|i| generation.policy.key_status().iter().any(|s| s.issuer == i && s.remote_sources > 0))
    else {
        return decision;
    };
    let gate = keys.gate(&issuer);
    let wait = keys.options().refetch_wait;
    let refetch = {
        let (authz, keys, issuer) = (Arc::clone(authz), Arc::clone(keys), issuer.clone());
        async move {
            let mut last = gate.lock().await;
            if authz.generation().id != generation.id {
                // Another request's refetch brought new keys while this one waited.
                return true;
            }
            let labels = KeyMetrics::issuer(&issuer);
            if last.is_some_and(|t| t.elapsed() < keys.options().refetch_interval) {
                keys.metrics.refetches_limited.get_or_create(&labels).inc();
                return false;
            }
            *last = Some(Instant::now());
            keys.metrics.refetches.get_or_create(&labels).inc();
            tracing::info!(issuer = %issuer, "unknown kid: refetching the issuer's keys");
            if keys.fetch_issuer(&issuer).await {
                refresh(&authz).await;
            }
            authz.generation().id != generation.id
        }
    };
    // The refetch runs to the end even when this request stops waiting for it.
    let task = tokio::spawn(refetch);
    match tokio::time::timeout(wait, task).await {
        Ok(Ok(true)) => authz.check(req, api),
        _ => decision,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(values: &[&str]) -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        for v in values {
            h.append(reqwest::header::CACHE_CONTROL, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_cache_lifetime_is_max_age_and_no_cache_is_the_minimum() {
        assert_eq!(max_age(&headers(&["public, max-age=3600, must-revalidate"])), Some(Duration::from_secs(3600)));
        assert_eq!(max_age(&headers(&["public", "Max-Age=\"60\""])), Some(Duration::from_secs(60)));
        assert_eq!(max_age(&headers(&["max-age=600, no-cache"])), Some(Duration::ZERO));
        assert_eq!(max_age(&headers(&["no-store"])), Some(Duration::ZERO));
        assert_eq!(max_age(&headers(&["public"])), None);
        assert_eq!(max_age(&headers(&["max-age=soon"])), None);
        assert_eq!(max_age(&headers(&[])), None);
    }

    #[test]
    fn discovery_takes_an_https_jwks_uri_from_exactly_this_issuer() {
        let doc = |iss: &str, uri: &str| serde_json::json!({ "issuer": iss, "jwks_uri": uri }).to_string().into_bytes();
        let issuer = "https://login.example/";
        assert_eq!(
            discovered_jwks_uri(&doc(issuer, "https://login.example/keys"), issuer).unwrap(),
            "https://login.example/keys"
        );
        for (body, why) in [
            (doc("https://login.example", "https://login.example/keys"), "another issuer"),
            (doc(issuer, "http://login.example/keys"), "not https"),
            (br#"{"jwks_uri":"https://x/keys"}"#.to_vec(), "no `issuer`"),
            (br#"{"issuer":"https://login.example/"}"#.to_vec(), "no `jwks_uri`"),
            (b"<html>".to_vec(), "not JSON"),
        ] {
            let e = discovered_jwks_uri(&body, issuer).unwrap_err();
            assert_eq!(e.label(), "invalid", "{why}");
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
    }
}
