//! The WASI HTTP glue: the incoming request in, the core in the middle, the upstream's answer
//! or the denial out. Nothing here decides anything.

use std::sync::OnceLock;

use portcullis_adapter::deny::{Denial, Forward};
use portcullis_adapter::request::RequestParts;
use portcullis_core::{Decision, Policy, Reason, Revocations};

use crate::settings::{self, Settings, Url};

#[cfg(feature = "spin")]
mod store {
    //! Spin's key-value store and the feed over outbound HTTP, for [`crate::revocations`].
    use std::time::Duration;

    use portcullis_adapter::revocation::{FEED_PATH, FeedTransport};

    use super::bindings::fermyon::spin::key_value;
    use crate::revocations::{self, Store};
    use crate::settings::Feed;

    /// Largest feed answer read (a snapshot of about a million revocations).
    const MAX_FEED_BYTES: usize = 64 << 20;

    pub(super) struct Spin(pub(super) key_value::Store);

    impl Store for Spin {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            self.0.get(key).map_err(|e| format!("key-value get: {e:?}"))
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
            self.0.set(key, value).map_err(|e| format!("key-value set: {e:?}"))
        }
        fn delete(&self, key: &str) -> Result<(), String> {
            self.0.delete(key).map_err(|e| format!("key-value delete: {e:?}"))
        }
    }

    struct Http<'a>(&'a Feed);

    impl FeedTransport for Http<'_> {
        fn fetch(&mut self, target: &str) -> Result<Vec<u8>, String> {
            debug_assert!(target.starts_with(FEED_PATH));
            let auth = [("authorization".to_owned(), self.0.credential.as_bytes().to_vec())];
            let (status, body) = super::get(&self.0.url, target, &auth, MAX_FEED_BYTES)?;
            if status != 200 {
                return Err(format!("the feed answered {status}"));
            }
            Ok(body)
        }
    }

    /// Asks the sidecar's admin listener for its key sets.
    struct KeysHttp<'a>(&'a crate::settings::Url);

    /// Largest key set answer read.
    const MAX_KEYS_BYTES: usize = 4 << 20;

    impl crate::keys::KeysTransport for KeysHttp<'_> {
        fn fetch(&mut self, if_none_match: Option<&str>) -> Result<Option<Vec<u8>>, String> {
            let headers: Vec<(String, Vec<u8>)> =
                if_none_match.map(|e| ("if-none-match".to_owned(), e.as_bytes().to_vec())).into_iter().collect();
            match super::get(self.0, "/v1/keys", &headers, MAX_KEYS_BYTES)? {
                (304, _) => Ok(None),
                (200, body) => Ok(Some(body)),
                (status, _) => Err(format!("the sidecar answered {status}")),
            }
        }
    }

    /// The key sets in the store (asking the sidecar first when due); a failure is logged and
    /// the stored sets (or none) answer.
    pub(super) fn key_sets(keys: &crate::settings::KeysFeed, now: Duration) -> Option<crate::keys::Sets> {
        let store = match open(&keys.store) {
            Ok(s) => s,
            Err(e) => {
                super::log(&format!("key sets: {e}"));
                return None;
            }
        };
        let (sets, error) = crate::keys::current(&store, keys.poll, now, &mut KeysHttp(&keys.url));
        if let Some(e) = error {
            super::log(&format!("key sets from the sidecar: {e}; the stored sets stay"));
        }
        sets
    }

    /// Opens the store labelled `label`.
    pub(super) fn open(label: &str) -> Result<Spin, String> {
        key_value::Store::open(label).map(Spin).map_err(|e| format!("key-value store `{label}`: {e:?}"))
    }

    /// The stored set for this request, synced first when due; a failed sync is logged (the
    /// store keeps its set).
    pub(super) fn revocations<'a>(store: &'a Spin, feed: &Feed, now: Duration) -> revocations::Stored<'a> {
        let (stored, error) = revocations::Stored::open_synced(store, feed, &mut Http(feed), now);
        if let Some(e) = error {
            super::log(&format!("revocation feed: {e}; the stored set stays"));
        }
        stored
    }

    /// What the decision asks of Spin: revocations from the store, and valid signatures
    /// remembered there.
    pub(super) struct Host<'a> {
        pub(super) revocations: Option<revocations::Stored<'a>>,
        pub(super) signatures: Option<crate::signatures::Remembered<'a>>,
        /// The rate-limit store (opened on the first limit that applies) and its slot count.
        pub(super) rate_limits: crate::rate_limits::Buckets<'a>,
    }

    impl portcullis_core::Revocations for Host<'_> {
        fn status(&self, query: portcullis_core::RevocationQuery<'_>) -> portcullis_core::RevocationStatus {
            // Without a feed only the policy's own `revoked` lists apply (checked by the core).
            self.revocations.as_ref().map_or(portcullis_core::RevocationStatus::Active, |r| r.status(query))
        }

        fn verify_signature(&self, check: &portcullis_core::SignatureCheck<'_>) -> portcullis_core::SignatureVerdict {
            self.signatures.as_ref().map_or(portcullis_core::SignatureVerdict::Unsupported, |s| s.lookup(check))
        }

        fn signature_checked(&self, check: &portcullis_core::SignatureCheck<'_>, valid: bool) {
            if let Some(s) = &self.signatures {
                s.remember(check, valid);
            }
        }

        fn rate_limit(&self, bucket: &portcullis_core::rate::RateBucket<'_>) -> portcullis_core::rate::RateCount {
            self.rate_limits.take(bucket, super::since_epoch())
        }
    }
}

#[allow(unsafe_code, missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
mod bindings {
    #[cfg(feature = "spin")]
    wit_bindgen::generate!({ world: "gate", path: "../../wit/spin", generate_all });
    #[cfg(not(feature = "spin"))]
    wit_bindgen::generate!({ world: "gate-wasi", path: "../../wit/spin", generate_all });

    use super::Component;
    export!(Component with_types_in self);
}

use bindings::exports::portcullis::spin::setup;
use bindings::exports::wasi::http::incoming_handler;
use bindings::wasi::http::outgoing_handler;
use bindings::wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};
use bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};

struct Component;

/// The policy, compiled at build time (wizer) by [`setup::Guest::install`]: every instance
/// starts with it in its memory image.
static POLICY: OnceLock<Policy> = OnceLock::new();
/// The settings fixed at build time; application variables override them.
static DEFAULTS: OnceLock<Vec<(String, String)>> = OnceLock::new();
/// Random bytes from the build machine, keying what the component writes to shared stores.
static SECRET: OnceLock<Vec<u8>> = OnceLock::new();
/// What the policy was compiled from, when it names key sources in the network: compiled again
/// with the sidecar's sets when they differ from the ones built in.
static REMOTE: OnceLock<(portcullis_adapter::bundle::Bundle, crate::keys::Sets)> = OnceLock::new();

/// Largest chunk a WASI output stream takes in one `blocking-write-and-flush`, and the size of a
/// read.
const CHUNK: u64 = 4096;

/// Header names and values, as WASI HTTP lists them.
type Headers = Vec<(String, Vec<u8>)>;

/// Headers that belong to one hop, never forwarded either way (RFC 9110 §7.6.1), and `host`,
/// which the outgoing request's authority replaces.
/// `proxy-authenticate` and `proxy-authorization` are hop-by-hop too, and WASI HTTP hosts refuse
/// them from a guest.
const HOP_BY_HOP: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "http2-settings",
];

impl setup::Guest for Component {
    fn install(
        policy: String,
        files: Vec<setup::File>,
        settings: Vec<(String, String)>,
        secret: Vec<u8>,
    ) -> Result<(), String> {
        let files = files.into_iter().map(|f| (f.path, f.contents)).collect();
        let bundle = portcullis_adapter::bundle::Bundle { name: "the policy".into(), text: policy, files };
        let compiled = bundle.compile().map_err(|e| format!("[{}] {e}", e.code()))?;
        if let Some((name, _)) = settings.iter().find(|(n, _)| !settings::NAMES.contains(&n.as_str())) {
            let known = settings::NAMES.join(", ");
            return Err(format!("[config_invalid] unknown setting `{name}` (known: {known})"));
        }
        if !bundle.remote_key_sources().map_err(|e| format!("[{}] {e}", e.code()))?.is_empty() {
            let built_in = bundle.remote_keys().map_err(|e| format!("[{}] {e}", e.code()))?;
            let _ = REMOTE.set((bundle, built_in));
        }
        POLICY.set(compiled).map_err(|_| "[config_invalid] a policy is already installed".to_owned())?;
        let _ = DEFAULTS.set(settings);
        let _ = SECRET.set(secret);
        Ok(())
    }
}

/// A setting: the application variable when the host has one, else the build-time default.
fn setting(name: &'static str) -> Option<String> {
    #[cfg(feature = "spin")]
    if let Ok(v) = bindings::fermyon::spin::variables::get(name) {
        return Some(v);
    }
    DEFAULTS.get()?.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

// Spin and `wasmtime serve` keep a component's stderr as its log.
#[allow(clippy::print_stderr)]
fn log(message: &str) {
    eprintln!("portcullis: {message}");
}

impl incoming_handler::Guest for Component {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let Some(policy) = POLICY.get() else {
            log("no policy in this component: build it with `portcullis spin build`");
            return respond_denied(out, Reason::InternalError);
        };
        let settings = match Settings::read(setting) {
            Ok(s) => s,
            Err(e) => {
                log(&e.to_string());
                return respond_denied(out, Reason::InternalError);
            }
        };
        let with_keys = fresh_keys(&settings);
        let policy = with_keys.as_ref().unwrap_or(policy);
        let headers = request.headers().entries();
        let decision = match decide_here(policy, &settings, &request, &headers) {
            Ok(d) => d,
            Err(e) => {
                log(&e);
                return respond_denied(out, Reason::InternalError);
            }
        };
        if !decision.allowed() {
            return respond_denied_with(out, decision.reason, &decision.response_headers);
        }
        let forward = Forward::of(&decision);
        let mut sent: Vec<(String, Vec<u8>)> = headers
            .into_iter()
            .filter(|(k, _)| {
                !HOP_BY_HOP.iter().any(|h| k.eq_ignore_ascii_case(h))
                    && !forward.remove.iter().any(|r| k.eq_ignore_ascii_case(r))
                    && !forward.set.iter().any(|(s, _)| k.eq_ignore_ascii_case(s))
            })
            .collect();
        sent.extend(forward.set.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())));
        if let Err(e) = pass_on(&settings.upstream, request, sent, &decision.response_headers, out) {
            log(&format!("the upstream: {e}"));
        }
    }
}

/// The policy compiled with the sidecar's key sets, when they differ from those built in
/// (`None`: the built-in policy decides).
#[cfg(feature = "spin")]
fn fresh_keys(settings: &Settings) -> Option<Policy> {
    let (bundle, built_in) = REMOTE.get()?;
    // The sidecar's sets over the built-in ones: a source the sidecar does not follow keeps
    // the set compiled in.
    let mut sets = built_in.clone();
    sets.extend(store::key_sets(settings.keys.as_ref()?, since_epoch())?);
    if &sets == built_in {
        return None;
    }
    let compiled = bundle.with_remote_keys(&sets).and_then(|b| b.compile());
    compiled
        .inspect_err(|e| log(&format!("key sets from the sidecar: [{}] {e}; the built-in keys decide", e.code())))
        .ok()
}

#[cfg(not(feature = "spin"))]
fn fresh_keys(_: &Settings) -> Option<Policy> {
    // `keys_feed` is refused by `decide_here` in this build.
    None
}

/// Decides with what this build of the component has: Spin's key-value store for revocations
/// and remembered signatures, or nothing but the policy.
#[cfg(feature = "spin")]
fn decide_here(
    policy: &Policy,
    settings: &Settings,
    request: &IncomingRequest,
    headers: &[(String, Vec<u8>)],
) -> Result<Decision, String> {
    let now = since_epoch();
    let revocations = settings.feed.as_ref().map(|feed| store::open(&feed.store)).transpose()?;
    let signatures = settings.signature_store.as_deref().map(store::open).transpose()?;
    let secret = SECRET.get().map_or(&[][..], Vec::as_slice);
    // Slot hashes are seeded from the build's secret: the same in every instance, unknown to
    // clients.
    let seed = secret.get(..8).and_then(|s| <[u8; 8]>::try_from(s).ok()).map_or(0, u64::from_le_bytes);
    let open = |label: &str| store::open(label).map(|s| Box::new(s) as Box<dyn crate::revocations::Store>);
    let host = store::Host {
        revocations: revocations
            .as_ref()
            .zip(settings.feed.as_ref())
            .map(|(kv, feed)| store::revocations(kv, feed, now)),
        signatures: signatures.as_ref().map(|kv| crate::signatures::Remembered::new(kv, secret)),
        rate_limits: crate::rate_limits::Buckets::new(
            &settings.rate_limit_store,
            settings.rate_limit_slots,
            seed,
            &open,
        ),
    };
    Ok(decide(policy, settings, request, headers, &host))
}

#[cfg(not(feature = "spin"))]
fn decide_here(
    policy: &Policy,
    settings: &Settings,
    request: &IncomingRequest,
    headers: &[(String, Vec<u8>)],
) -> Result<Decision, String> {
    if settings.feed.is_some() || settings.signature_store.is_some() || settings.keys.is_some() {
        return Err(
            "`revocations_feed`, `signature_cache_store` and `keys_feed` need the Spin build (a key-value store)"
                .into(),
        );
    }
    Ok(decide(policy, settings, request, headers, &portcullis_core::NoRevocations))
}

fn method_name(m: &Method) -> &str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(s) => s,
    }
}

fn decide(
    policy: &Policy,
    settings: &Settings,
    request: &IncomingRequest,
    headers: &[(String, Vec<u8>)],
    revocations: &dyn Revocations,
) -> Decision {
    let method = request.method();
    let target = request.path_with_query().unwrap_or_default();
    let authority = request.authority().unwrap_or_default();
    let scheme = match request.scheme() {
        Some(Scheme::Https) => "https",
        Some(Scheme::Other(_)) | Some(Scheme::Http) | None => "http",
    };
    let mut parts = RequestParts::new(method_name(&method), &target, &authority)
        .scheme(scheme)
        .headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    if let Some(h) = &settings.client_address_header {
        parts = parts.client_address_from(h);
    }
    let now = settings.fixed_now.unwrap_or_else(|| i64::try_from(since_epoch().as_secs()).unwrap_or(i64::MAX));
    parts.build(now).with_request(|r| policy.decide(r, revocations))
}

fn since_epoch() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// How long an outbound request may wait to connect and for its first byte.
const OUTBOUND_TIMEOUT_NS: u64 = 2_000_000_000;

/// `GET target` from `url` with `headers`: the status and at most `limit` bytes of body.
#[cfg_attr(not(feature = "spin"), allow(dead_code))]
fn get(url: &Url, target: &str, headers: &[(String, Vec<u8>)], limit: usize) -> Result<(u16, Vec<u8>), String> {
    use bindings::wasi::http::types::RequestOptions;
    let fields = Fields::from_list(headers).map_err(|e| format!("headers: {e:?}"))?;
    let request = OutgoingRequest::new(fields);
    let path = url.target(target);
    let ok = [
        request.set_scheme(Some(if url.https { &Scheme::Https } else { &Scheme::Http })).is_ok(),
        request.set_authority(Some(&url.authority)).is_ok(),
        request.set_path_with_query(Some(&path)).is_ok(),
    ];
    if ok.contains(&false) {
        return Err("the URL was refused".into());
    }
    let options = RequestOptions::new();
    let _ = options.set_connect_timeout(Some(OUTBOUND_TIMEOUT_NS));
    let _ = options.set_first_byte_timeout(Some(OUTBOUND_TIMEOUT_NS));
    let _ = options.set_between_bytes_timeout(Some(OUTBOUND_TIMEOUT_NS));
    let pending = outgoing_handler::handle(request, Some(options)).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(format!("{e:?}")),
        _ => return Err("no response".into()),
    };
    let status = response.status();
    let incoming = response.consume().map_err(|()| "no body".to_owned())?;
    let mut body = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| "no body stream".to_owned())?;
        loop {
            match stream.blocking_read(CHUNK * 16) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => return Err(format!("reading the body: {e:?}")),
            }
            if body.len() > limit {
                return Err(format!("the answer is more than {limit} bytes"));
            }
        }
    }
    let _ = IncomingBody::finish(incoming);
    Ok((status, body))
}

/// Answers with the denial, exactly as the sidecar renders it.
fn respond_denied(out: ResponseOutparam, reason: Reason) {
    respond_denied_with(out, reason, &[]);
}

/// Answers with the denial and the decision's response headers (CORS, rate limits, the
/// policy's).
fn respond_denied_with(out: ResponseOutparam, reason: Reason, extra: &[ResponseHeader]) {
    let denial = Denial::of(reason).or_else(|| Denial::of(Reason::InternalError));
    let (status, mut headers, body): (u16, Headers, &[u8]) = match &denial {
        Some(d) => (
            d.status,
            d.headers.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())).collect(),
            d.body.as_bytes(),
        ),
        None => (503, Vec::new(), &b""[..]),
    };
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())));
    respond(out, status, &headers, body);
}

/// A decision's response header.
type ResponseHeader = (std::sync::Arc<str>, std::sync::Arc<str>);

/// Answers with `status`, `headers` and `body`.
fn respond(out: ResponseOutparam, status: u16, headers: &[(String, Vec<u8>)], body: &[u8]) {
    let Ok(fields) = Fields::from_list(headers) else {
        return respond(out, 503, &[], b"");
    };
    let response = OutgoingResponse::new(fields);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else { return };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = outgoing.write() {
        let _ = write_all(&stream, body);
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

fn write_all(stream: &OutputStream, bytes: &[u8]) -> Result<(), StreamError> {
    bytes.chunks(4096).try_for_each(|chunk| stream.blocking_write_and_flush(chunk))
}

/// Streams an incoming body into an outgoing one (the caller finishes `to`).
fn stream_body(from: Result<IncomingBody, ()>, to: &OutgoingBody, what: &str) -> Result<(), String> {
    let (Ok(incoming), Ok(sink)) = (from, to.write()) else {
        return Err(format!("the {what} body is not readable"));
    };
    let copied = incoming.stream().map_err(|()| "no body stream".to_owned()).and_then(|source| copy(&source, &sink));
    drop(sink);
    let _ = IncomingBody::finish(incoming);
    copied
}

/// Copies `from` into `to` until `from` closes.
fn copy(from: &InputStream, to: &OutputStream) -> Result<(), String> {
    loop {
        match from.blocking_read(CHUNK) {
            Ok(chunk) => write_all(to, &chunk).map_err(|e| format!("writing: {e:?}"))?,
            Err(StreamError::Closed) => return Ok(()),
            Err(e) => return Err(format!("reading: {e:?}")),
        }
    }
}

/// Sends the request on to the upstream with `headers`, and its answer back.
fn pass_on(
    upstream: &Url,
    request: IncomingRequest,
    headers: Vec<(String, Vec<u8>)>,
    extra: &[ResponseHeader],
    out: ResponseOutparam,
) -> Result<(), String> {
    let bad_gateway = |out: ResponseOutparam, what: String| {
        let body = br#"{"error":"bad_gateway","status":502}"#;
        respond(out, 502, &[("content-type".into(), b"application/json".to_vec())], body);
        Err(what)
    };
    let Ok(fields) = Fields::from_list(&headers) else {
        return bad_gateway(out, "a request header the host refuses to forward".into());
    };
    let outgoing = OutgoingRequest::new(fields);
    let target = upstream.target(&request.path_with_query().unwrap_or_default());
    let set = [
        outgoing.set_method(&request.method()).is_ok(),
        outgoing.set_scheme(Some(if upstream.https { &Scheme::Https } else { &Scheme::Http })).is_ok(),
        outgoing.set_authority(Some(&upstream.authority)).is_ok(),
        outgoing.set_path_with_query(Some(&target)).is_ok(),
    ];
    if set.contains(&false) {
        return bad_gateway(out, "the upstream URL or the request target was refused".into());
    }
    let Ok(body) = outgoing.body() else { return bad_gateway(out, "no request body".into()) };
    let pending = match outgoing_handler::handle(outgoing, None) {
        Ok(p) => p,
        Err(e) => return bad_gateway(out, format!("cannot send: {e:?}")),
    };
    // The request body, streamed. An upstream may answer before it has read the body (and
    // close): its answer is still the answer, so a failed body only matters without one.
    let copied = stream_body(request.consume(), &body, "request")
        .and_then(|()| OutgoingBody::finish(body, None).map_err(|e| format!("finishing the request body: {e:?}")));
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return bad_gateway(out, copied.err().unwrap_or_else(|| format!("{e:?}"))),
        _ => return bad_gateway(out, copied.err().unwrap_or_else(|| "no response".into())),
    };
    if let Err(e) = copied {
        log(&format!("the upstream answered before taking the whole request body: {e}"));
    }
    // The decision's response headers replace the upstream's of the same name, except `vary`,
    // which is added to.
    let mut headers: Vec<_> = response
        .headers()
        .entries()
        .into_iter()
        .filter(|(k, _)| {
            !HOP_BY_HOP.iter().any(|h| k.eq_ignore_ascii_case(h))
                && !extra.iter().any(|(name, _)| &**name != "vary" && k.eq_ignore_ascii_case(name))
        })
        .collect();
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())));
    let Ok(fields) = Fields::from_list(&headers) else {
        return bad_gateway(out, "a response header the host refuses".into());
    };
    let answer = OutgoingResponse::new(fields);
    let _ = answer.set_status_code(response.status());
    let Ok(answer_body) = answer.body() else { return Err("no response body".into()) };
    ResponseOutparam::set(out, Ok(answer));
    let copied = stream_body(response.consume(), &answer_body, "response");
    let _ = OutgoingBody::finish(answer_body, None);
    copied
}
