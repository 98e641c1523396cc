//! The proxy-wasm glue: Envoy's ABI in, the adapter kit and the core in the middle, Envoy's ABI
//! out. Nothing here decides anything.
//!
//! Envoy runs one VM per worker thread; each has one root context (this [`Root`]) holding the
//! compiled policy and, when configured, its own follower of the sidecar's revocation feed,
//! shared by `Rc` with the worker's HTTP contexts (all on that thread).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use portcullis_adapter::deny::{Denial, Forward};
use portcullis_adapter::rate::{RECORD_BYTES, SlotKey, spend_record};
use portcullis_adapter::request::RequestParts;
use portcullis_adapter::revocation::FeedClient;
use portcullis_adapter::signatures::VerifiedSignatures;
use portcullis_adapter::tokens::VerifiedTokens;
use portcullis_core::rate::{RateBucket, RateCount, RateParams, Taken};
use portcullis_core::{
    Decision, PublicKeyRef, Reason, RevocationQuery, RevocationStatus, Revocations, SignatureCheck, SignatureVerdict,
    TokenCache, VerifiedToken,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

use crate::config::{self, Compiled};
use crate::signature;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

/// Largest feed answer read (a snapshot of about a million revocations).
const MAX_FEED_BYTES: usize = 64 << 20;
/// Largest key set answer read.
const MAX_KEYS_BYTES: usize = 4 << 20;
/// The tick while no snapshot has loaded yet (requests are denied until one has).
const FIRST_LOAD_TICK: Duration = Duration::from_millis(100);
/// The longest tick: counters reach Envoy's stats at least this often.
const FLUSH_TICK: Duration = Duration::from_secs(1);

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Envoy's clock as a duration since the Unix epoch.
fn clock() -> Duration {
    hostcalls::get_current_time().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default()
}

/// A counter kept in the VM and added to Envoy's stat on the root context's tick: one call
/// across the ABI per tick instead of one per request.
struct Counter {
    id: Option<u32>,
    pending: Cell<u64>,
}

impl Counter {
    fn define(name: &str) -> Counter {
        Counter { id: hostcalls::define_metric(MetricType::Counter, name).ok(), pending: Cell::new(0) }
    }

    fn add(&self) {
        self.pending.set(self.pending.get().saturating_add(1));
    }

    fn flush(&self) {
        let n = self.pending.take();
        if let (Some(id), true) = (self.id, n > 0) {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// Counters and gauges, as Envoy stats (`wasmcustom.portcullis.*`). Counters reach Envoy on
/// the next tick (at most [`FLUSH_TICK`] later); gauges are set on the tick.
struct Metrics {
    decisions: Vec<(Reason, Counter)>,
    feed_age_ms: Option<u32>,
    feed_errors: Counter,
    feed_entries: Option<u32>,
    feed_stale: Option<u32>,
    /// Signatures Envoy's BoringSSL verified (valid or not).
    signatures_by_envoy: Counter,
    /// Signatures left to the core's own code (an algorithm or key the function does not take).
    signatures_in_vm: Counter,
    /// Signatures answered from the cache of verified ones.
    signatures_cached: Counter,
    /// Tokens answered from the cache of verified ones.
    tokens_cached: Counter,
    /// New key sets from the sidecar put in force (the policy compiled again).
    keys_updates: Counter,
    /// Failed key set polls (the keys in force stay).
    keys_errors: Counter,
    /// Rate-limit buckets that could not be updated (the policy's `when_uncounted` decided).
    rate_limit_errors: Counter,
}

impl Metrics {
    fn define() -> Metrics {
        let gauge = |name: &str| hostcalls::define_metric(MetricType::Gauge, name).ok();
        Metrics {
            decisions: Reason::ALL
                .iter()
                .map(|&r| (r, Counter::define(&format!("portcullis.decisions.{}", r.code()))))
                .collect(),
            feed_age_ms: gauge("portcullis.revocations.feed_age_ms"),
            feed_errors: Counter::define("portcullis.revocations.feed_errors"),
            feed_entries: gauge("portcullis.revocations.entries"),
            feed_stale: gauge("portcullis.revocations.stale"),
            signatures_by_envoy: Counter::define("portcullis.signatures.by_envoy"),
            signatures_in_vm: Counter::define("portcullis.signatures.in_vm"),
            signatures_cached: Counter::define("portcullis.signatures.cached"),
            tokens_cached: Counter::define("portcullis.tokens.cached"),
            keys_updates: Counter::define("portcullis.keys.updates"),
            keys_errors: Counter::define("portcullis.keys.errors"),
            rate_limit_errors: Counter::define("portcullis.rate_limits.errors"),
        }
    }

    fn decided(&self, reason: Reason) {
        if let Some((_, counter)) = self.decisions.iter().find(|(r, _)| *r == reason) {
            counter.add();
        }
    }

    fn set(id: Option<u32>, value: u64) {
        if let Some(id) = id {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    fn flush(&self) {
        let counters = [
            &self.feed_errors,
            &self.signatures_by_envoy,
            &self.signatures_in_vm,
            &self.signatures_cached,
            &self.tokens_cached,
            &self.keys_updates,
            &self.keys_errors,
            &self.rate_limit_errors,
        ];
        for c in self.decisions.iter().map(|(_, c)| c).chain(counters) {
            c.flush();
        }
    }
}

/// What a worker's contexts share.
struct Shared {
    compiled: Compiled,
    /// Whether a decision can depend on the peer address (read across the ABI only then).
    reads_peer: bool,
    feed: Option<FeedClient>,
    metrics: Metrics,
    /// SubjectPublicKeyInfo DER of each public key the core asked about, by the address of its
    /// bytes in the policy (which lives as long as this cache).
    spki: RefCell<SpkiCache>,
    /// Signatures Envoy found valid, by digest (see the adapter kit's `signatures`).
    verified: RefCell<VerifiedSignatures>,
    /// JWTs that passed every check (see the adapter kit's `tokens`).
    tokens: RefCell<VerifiedTokens>,
}

/// See [`Shared::spki`].
type SpkiCache = HashMap<(usize, usize), Option<Rc<[u8]>>>;

impl Shared {
    /// Puts a policy compiled with new key sets in force. Every cache keyed by what the old
    /// policy held goes with it (the key addresses of `spki`, tokens verified with old keys).
    fn install(&mut self, bundle: portcullis_adapter::bundle::Bundle, policy: portcullis_core::Policy) {
        self.reads_peer = self.compiled.client_address_header.is_none() && policy.reads_client_address();
        self.compiled.bundle = bundle;
        self.compiled.policy = policy;
        self.spki.borrow_mut().clear();
        self.verified.borrow_mut().clear();
        *self.tokens.borrow_mut() = VerifiedTokens::new(self.compiled.token_cache_entries);
    }

    fn spki(&self, key: PublicKeyRef<'_>) -> Option<Rc<[u8]>> {
        let bytes = match key {
            PublicKeyRef::Rsa { n, .. } => n,
            PublicKeyRef::Ec { point } => point,
        };
        let id = (bytes.as_ptr() as usize, bytes.len());
        self.spki.borrow_mut().entry(id).or_insert_with(|| signature::spki_der(key).map(Rc::from)).clone()
    }
}

/// The decision's view of the outside world in Envoy: the feed's set, and BoringSSL.
struct EnvoyHost<'a>(&'a Shared);

impl Revocations for EnvoyHost<'_> {
    fn status(&self, query: RevocationQuery<'_>) -> RevocationStatus {
        match &self.0.feed {
            Some(feed) => feed.status(query),
            // Without a feed only the policy's own `revoked` lists apply (checked by the core).
            None => RevocationStatus::Active,
        }
    }

    fn verified_tokens(&self) -> Option<&dyn TokenCache> {
        (self.0.compiled.token_cache_entries > 0).then_some(self as &dyn TokenCache)
    }

    fn rate_limit(&self, bucket: &RateBucket<'_>) -> RateCount {
        let now = u64::try_from(clock().as_nanos()).unwrap_or(u64::MAX);
        match shared_bucket(bucket.key, bucket.params, now, self.0.compiled.rate_limit_slots) {
            Some(taken) => RateCount::Counted(taken),
            None => {
                self.0.metrics.rate_limit_errors.add();
                RateCount::Unavailable
            }
        }
    }

    fn verify_signature(&self, check: &SignatureCheck<'_>) -> SignatureVerdict {
        let metrics = &self.0.metrics;
        let (verdict, lookup) =
            self.0.verified.borrow_mut().verify(check, |c| Ok::<_, std::convert::Infallible>(self.by_envoy(c)));
        let verdict = verdict.unwrap_or(SignatureVerdict::Unsupported);
        let counter = match verdict {
            _ if lookup.hit => &metrics.signatures_cached,
            SignatureVerdict::Unsupported => &metrics.signatures_in_vm,
            _ => &metrics.signatures_by_envoy,
        };
        counter.add();
        verdict
    }
}

impl TokenCache for EnvoyHost<'_> {
    fn get(&self, token: &str) -> Option<std::sync::Arc<VerifiedToken>> {
        let hit = self.0.tokens.borrow().get(token);
        if hit.is_some() {
            self.0.metrics.tokens_cached.add();
        }
        hit
    }

    fn put(&self, token: &str, verified: std::sync::Arc<VerifiedToken>) {
        self.0.tokens.borrow_mut().put(token, verified);
    }
}

/// Attempts at a compare-and-swap before a bucket counts as unavailable (each failure means
/// another worker wrote the same slot in between).
const CAS_ATTEMPTS: usize = 16;

/// Spends one request from a bucket kept in Envoy's shared data, which every worker VM of this
/// `vm_id` sees: slot `hash(key) % slots` holds the key's 64-bit fingerprint and its GCRA
/// arrival time (16 bytes), updated by compare-and-swap. A slot held by another key is taken
/// over (that key restarts full): the number of slots, and so Envoy's memory, stays fixed
/// whatever keys arrive. `None` when the update kept losing races.
fn shared_bucket(key: &str, params: RateParams, now_ns: u64, slots: u32) -> Option<Taken> {
    let slot = SlotKey::of(key, u64::from(slots), SLOT_SEED);
    let name = format!("portcullis.rl.{}", slot.slot);
    for _ in 0..CAS_ATTEMPTS {
        let (value, cas) = hostcalls::get_shared_data(&name).ok()?;
        let Some(cas) = cas else {
            // A slot never written: store an empty record (idempotent, so racing workers agree)
            // and read it back with its version.
            hostcalls::set_shared_data(&name, Some(&[0u8; RECORD_BYTES]), None).ok()?;
            continue;
        };
        let (record, taken) = spend_record(value.as_deref(), slot, params, now_ns);
        let Some(record) = record else { return Some(taken) };
        if hostcalls::set_shared_data(&name, Some(&record), Some(cas)).is_ok() {
            return Some(taken);
        }
    }
    None
}

/// Envoy offers a VM no randomness to seed with, so the slot hash is fixed: a client who knew
/// it could aim keys at one slot, which only ever restarts that slot's bucket full.
const SLOT_SEED: u64 = 0x706f_7274_6375_6c6c;

impl EnvoyHost<'_> {
    fn by_envoy(&self, check: &SignatureCheck<'_>) -> SignatureVerdict {
        let Some(spki) = self.0.spki(check.key) else { return SignatureVerdict::Unsupported };
        let Some(args) = signature::arguments(check, &spki) else { return SignatureVerdict::Unsupported };
        match hostcalls::call_foreign_function(signature::FUNCTION, Some(&args)) {
            Ok(Some(out)) => match signature::result(&out) {
                Some(true) => SignatureVerdict::Valid,
                Some(false) => SignatureVerdict::Invalid,
                None => SignatureVerdict::Unsupported,
            },
            // Missing function, or a key Envoy would not parse: the core verifies itself.
            _ => SignatureVerdict::Unsupported,
        }
    }
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<RefCell<Shared>>>,
    /// The feed call in flight: its token and when it was sent.
    in_flight: Option<(u32, Duration)>,
    /// The tick period in force: [`FIRST_LOAD_TICK`] until the first snapshot, then the poll
    /// period or [`FLUSH_TICK`], whichever is shorter.
    period: Duration,
    /// When the last feed call was sent.
    last_sent: Option<Duration>,
    /// The last feed failure logged: a failure that repeats every poll is logged once (the
    /// `feed_errors` counter counts them all), and the recovery once.
    last_feed_error: Option<String>,
    /// The key set call in flight: its token and when it was sent.
    keys_in_flight: Option<(u32, Duration)>,
    /// When the last key set call was sent, and whether one has answered.
    keys_sent: Option<Duration>,
    keys_loaded: bool,
    /// The sidecar's `ETag` of the sets in force.
    keys_etag: Option<String>,
    /// The last key set failure logged (each distinct one once).
    last_keys_error: Option<String>,
}

impl Root {
    fn feed_failed(&mut self, metrics: &Metrics, message: String) {
        metrics.feed_errors.add();
        if self.last_feed_error.as_deref() != Some(message.as_str()) {
            log(LogLevel::Warn, &format!("portcullis: revocation feed: {message}; the set in force stays"));
            self.last_feed_error = Some(message);
        }
    }
}

impl Root {
    /// The sidecar's answer to `GET /v1/keys`: new sets compile into a new policy for this VM;
    /// a failure keeps the policy in force.
    fn on_keys(&mut self, body_size: usize) {
        let Some(shared) = self.shared.clone() else { return };
        let mut guard = shared.borrow_mut();
        let s = &mut *guard;
        let status = self.get_http_call_response_header(":status");
        let outcome = match status.as_deref() {
            Some("304") => Ok(false),
            Some("200") if body_size <= MAX_KEYS_BYTES => {
                let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
                let etag = self.get_http_call_response_header("etag");
                let compiled = config::key_sets(&body).and_then(|sets| {
                    // Over the sets in force: a source the sidecar does not follow keeps the one
                    // the configuration carried.
                    let mut merged = s.compiled.bundle.remote_keys().map_err(|e| e.to_string())?;
                    merged.extend(sets);
                    let bundle = s.compiled.bundle.with_remote_keys(&merged).map_err(|e| e.to_string())?;
                    if bundle == s.compiled.bundle {
                        // A new generation of the sidecar (a policy reload), the same keys.
                        return Ok(None);
                    }
                    let policy = bundle.compile().map_err(|e| e.to_string())?;
                    Ok(Some((bundle, policy)))
                });
                compiled.map(|new| {
                    self.keys_etag = etag;
                    new.map(|(bundle, policy)| s.install(bundle, policy)).is_some()
                })
            }
            Some("200") => Err(format!("an answer of {body_size} bytes, more than {MAX_KEYS_BYTES}")),
            other => Err(format!("the sidecar answered {}", other.unwrap_or("nothing (timeout or reset)"))),
        };
        match outcome {
            Ok(changed) => {
                self.keys_loaded = true;
                if changed {
                    s.metrics.keys_updates.add();
                    log(LogLevel::Info, "portcullis: key sets from the sidecar: new keys in force");
                }
                if self.last_keys_error.take().is_some() {
                    log(LogLevel::Info, "portcullis: key sets from the sidecar: answering again");
                }
            }
            Err(e) => {
                s.metrics.keys_errors.add();
                if self.last_keys_error.as_deref() != Some(e.as_str()) {
                    log(LogLevel::Warn, &format!("portcullis: key sets from the sidecar: {e}; the keys in force stay"));
                    self.last_keys_error = Some(e);
                }
            }
        }
    }

    /// Asks the sidecar for its key sets when due (every tick until one answer, then once per
    /// poll period).
    fn poll_keys(&mut self, s: &Shared, now: Duration) {
        let Some(k) = &s.compiled.keys else { return };
        if let Some((_, sent)) = self.keys_in_flight {
            if now.saturating_sub(sent) < k.timeout + k.poll {
                return;
            }
            self.keys_in_flight = None;
        }
        if self.keys_loaded && self.keys_sent.is_some_and(|t| now.saturating_sub(t) + self.period / 2 < k.poll) {
            return;
        }
        let mut headers = vec![(":method", "GET"), (":path", "/v1/keys"), (":authority", k.authority.as_str())];
        if let Some(etag) = &self.keys_etag {
            headers.push(("if-none-match", etag.as_str()));
        }
        match self.dispatch_http_call(&k.cluster, headers, None, vec![], k.timeout) {
            Ok(token) => {
                self.keys_in_flight = Some((token, now));
                self.keys_sent = Some(now);
            }
            Err(status) => {
                s.metrics.keys_errors.add();
                let e = format!("cannot call it ({status:?}); is cluster `{}` defined?", k.cluster);
                if self.last_keys_error.as_deref() != Some(e.as_str()) {
                    log(LogLevel::Warn, &format!("portcullis: key sets from the sidecar: {e}"));
                    self.last_keys_error = Some(e);
                }
            }
        }
    }

    /// The tick once everything has loaded: counters flushed every [`FLUSH_TICK`], the feed and
    /// the key sets polled on their periods.
    fn steady_tick(compiled: &Compiled) -> Duration {
        let mut period = FLUSH_TICK;
        if let Some(f) = &compiled.feed {
            period = period.min(f.poll);
        }
        if let Some(k) = &compiled.keys {
            period = period.min(k.poll);
        }
        period
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        if self.keys_in_flight.is_some_and(|(t, _)| t == token) {
            self.keys_in_flight = None;
            self.on_keys(body_size);
            return;
        }
        let Some((expected, sent)) = self.in_flight else { return };
        if token != expected {
            return;
        }
        self.in_flight = None;
        let Some(shared) = self.shared.clone() else { return };
        let mut guard = shared.borrow_mut();
        let s = &mut *guard;
        let status = self.get_http_call_response_header(":status");
        let outcome = if status.as_deref() != Some("200") {
            Err(format!("the feed answered {}", status.as_deref().unwrap_or("nothing (timeout or reset)")))
        } else if body_size > MAX_FEED_BYTES {
            Err(format!("the feed's answer is {body_size} bytes, more than {MAX_FEED_BYTES}"))
        } else {
            let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
            match s.feed.as_mut() {
                Some(feed) => feed.on_response(&body, sent).map(|_| ()).map_err(|e| format!("[{}] {e}", e.code())),
                None => Ok(()),
            }
        };
        match outcome {
            Ok(()) => {
                if let Some(feed) = s.feed.as_mut() {
                    feed.tick(clock());
                }
                if self.last_feed_error.take().is_some() {
                    log(LogLevel::Info, "portcullis: revocation feed: answering again");
                }
            }
            Err(e) => {
                if status.as_deref() != Some("200")
                    && let Some(feed) = s.feed.as_mut()
                {
                    feed.on_failure();
                }
                self.feed_failed(&s.metrics, e);
            }
        }
        let synced = s.feed.as_ref().is_some_and(|f| f.replica().synced());
        if synced {
            self.tick_every(Root::steady_tick(&s.compiled));
        }
    }

    fn on_done(&mut self) -> bool {
        if let Some(shared) = &self.shared {
            shared.borrow().metrics.flush();
        }
        true
    }
}

impl Root {
    fn tick_every(&mut self, period: Duration) {
        if self.period != period {
            self.set_tick_period(period);
            self.period = period;
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let compiled = match config::compile(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log(LogLevel::Critical, &format!("portcullis: configuration refused, the filter will not start: {e}"));
                return false;
            }
        };
        if compiled.fixed_now.is_some() {
            log(LogLevel::Warn, "portcullis: `fixed_now` is set: decisions use a fixed time, not Envoy's clock");
        }
        let feed = compiled.feed.as_ref().map(|f| FeedClient::new(f.mode, f.stale_after, clock()));
        let (cache_entries, token_entries) = (compiled.signature_cache_entries, compiled.token_cache_entries);
        self.period = Duration::ZERO;
        self.tick_every(if feed.is_some() { FIRST_LOAD_TICK } else { Root::steady_tick(&compiled) });
        log(
            LogLevel::Info,
            &format!(
                "portcullis: policy loaded; revocations {}",
                if feed.is_some() {
                    "from the sidecar's feed (denied until the first snapshot)"
                } else {
                    "from the policy only"
                }
            ),
        );
        let reads_peer = compiled.client_address_header.is_none() && compiled.policy.reads_client_address();
        self.shared = Some(Rc::new(RefCell::new(Shared {
            reads_peer,
            compiled,
            feed,
            metrics: Metrics::define(),
            spki: RefCell::new(HashMap::new()),
            verified: RefCell::new(VerifiedSignatures::new(cache_entries)),
            tokens: RefCell::new(VerifiedTokens::new(token_entries)),
        })));
        self.in_flight = None;
        self.last_sent = None;
        self.keys_in_flight = None;
        self.keys_sent = None;
        self.keys_loaded = false;
        self.keys_etag = None;
        true
    }

    fn on_tick(&mut self) {
        let Some(shared) = self.shared.clone() else { return };
        let mut guard = shared.borrow_mut();
        let s = &mut *guard;
        s.metrics.flush();
        let now = clock();
        self.poll_keys(s, now);
        let Some(feed) = s.feed.as_mut() else { return };
        if let Some(stale) = feed.tick(now) {
            let (level, what) = if stale { (LogLevel::Warn, "stale") } else { (LogLevel::Info, "fresh") };
            log(level, &format!("portcullis: revocations are {what}"));
        }
        let (age, entries, stale) = (feed.age(now), feed.replica().set().len(), feed.is_stale());
        let target = feed.target();
        Metrics::set(s.metrics.feed_age_ms, u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        Metrics::set(s.metrics.feed_entries, entries as u64);
        Metrics::set(s.metrics.feed_stale, u64::from(stale));
        let Some(f) = &s.compiled.feed else { return };
        if let Some((_, sent)) = self.in_flight {
            if now.saturating_sub(sent) < f.timeout + f.poll {
                return;
            }
            // Envoy answers every call (a timeout is a response without `:status`); this is
            // only a guard against a lost callback.
            self.in_flight = None;
        }
        // Before the first snapshot every tick asks; after it, once per poll period (half a
        // tick early rather than a whole tick late).
        let synced = s.feed.as_ref().is_some_and(|f| f.replica().synced());
        if synced && self.last_sent.is_some_and(|t| now.saturating_sub(t) + self.period / 2 < f.poll) {
            return;
        }
        let headers = vec![
            (":method", "GET"),
            (":path", target.as_str()),
            (":authority", f.authority.as_str()),
            (f.header.as_str(), f.value.as_str()),
        ];
        match self.dispatch_http_call(&f.cluster, headers, None, vec![], f.timeout) {
            Ok(token) => {
                self.in_flight = Some((token, now));
                self.last_sent = Some(now);
            }
            Err(status) => {
                if let Some(feed) = s.feed.as_mut() {
                    feed.on_failure();
                }
                let message = format!("cannot call it ({status:?}); is cluster `{}` defined?", f.cluster);
                self.feed_failed(&s.metrics, message);
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter { shared: self.shared.clone(), response_headers: Vec::new() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    shared: Option<Rc<RefCell<Shared>>>,
    /// The allowed decision's headers for the upstream's response (CORS, rate limits, the
    /// policy's), added when it passes back through.
    response_headers: Vec<(std::sync::Arc<str>, std::sync::Arc<str>)>,
}

impl Context for Filter {}

impl Filter {
    fn decide(&self, s: &Shared, headers: &[(String, Vec<u8>)]) -> Decision {
        let pseudo = |name: &str| {
            headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v)).unwrap_or_default()
        };
        let (method, path, authority, scheme) =
            (pseudo(":method"), pseudo(":path"), pseudo(":authority"), pseudo(":scheme"));
        let peer = s
            .reads_peer
            .then(|| self.get_property(vec!["source", "address"]))
            .flatten()
            .and_then(|a| String::from_utf8(a).ok())
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip());
        let mut parts = RequestParts::new(&method, &path, &authority)
            .scheme(&scheme)
            .headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .peer(peer);
        if let Some(h) = &s.compiled.client_address_header {
            parts = parts.client_address_from(h);
        }
        let now = s.compiled.fixed_now.unwrap_or_else(|| i64::try_from(clock().as_secs()).unwrap_or(i64::MAX));
        let request = parts.build(now);
        request.with_request(|r| s.compiled.policy.decide(r, &EnvoyHost(s)))
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            // No policy in this VM (Envoy does not start a filter whose configuration failed;
            // this is the guard behind that).
            return self.deny(Reason::InternalError, &[]);
        };
        let s = shared.borrow();
        let headers = self.get_http_request_headers_bytes();
        let decision = self.decide(&s, &headers);
        s.metrics.decided(decision.reason);
        if !decision.allowed() {
            return self.deny(decision.reason, &decision.response_headers);
        }
        let forward = Forward::of(&decision);
        // Only names the request carries: each removal is a call across the ABI.
        for name in forward.remove.iter().filter(|n| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n))) {
            self.set_http_request_header(name, None);
        }
        for (name, value) in &forward.set {
            self.set_http_request_header(name, Some(value));
        }
        drop(s);
        self.response_headers = decision.response_headers;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            // The upstream's own reasons to vary still hold; every other name is ours to set.
            if &*name == "vary" {
                self.add_http_response_header(&name, &value);
            } else {
                self.set_http_response_header(&name, Some(&value));
            }
        }
        Action::Continue
    }
}

impl Filter {
    /// Answers locally with the denial, exactly as the sidecar renders it, with the decision's
    /// response headers (CORS, rate limits, the policy's).
    fn deny(&self, reason: Reason, extra: &[(std::sync::Arc<str>, std::sync::Arc<str>)]) -> Action {
        // `Denial::of` answers every reason but `allowed`, which is never denied.
        match Denial::of(reason).or_else(|| Denial::of(Reason::InternalError)) {
            Some(d) => {
                let mut headers = d.headers;
                headers.extend(extra.iter().map(|(k, v)| (&**k, &**v)));
                let body = (!d.body.is_empty()).then_some(d.body.as_bytes());
                self.send_http_response(u32::from(d.status), headers, body);
            }
            None => self.send_http_response(503, Vec::new(), None),
        }
        Action::Pause
    }
}
