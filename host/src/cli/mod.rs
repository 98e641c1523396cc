//! The command line. Exit codes: 0 allow (or success), 1 deny, 2 usage, policy or input error.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::{Args, Parser, Subcommand};
use portcullis_adapter::request::RequestParts;
use portcullis_core::OwnedRequest;

/// Writes to stdout; a closed or failing stdout is an `io` failure (exit 2), never a panic.
macro_rules! out {
    ($($arg:tt)*) => { crate::cli::write_stdout(format_args!($($arg)*), false) };
}

/// [`out!`] with a newline.
macro_rules! outln {
    ($($arg:tt)*) => { crate::cli::write_stdout(format_args!($($arg)*), true) };
}

mod revocations;

use crate::check::{self, Decider};
use crate::policy_files;
use crate::token;

const ABOUT: &str = "Portcullis: one authorization decision for Envoy, Spin and the command line";

const CHECK_HELP: &str = "\
Examples:
  portcullis check --policy policies/example.yaml --token \"$(cat policies/demo.jwt)\" --now 1800000000
  portcullis check --policy p.yaml --header 'X-API-Key: ask_...' --client-ip 203.0.113.9
  portcullis check --policy p.yaml --batch requests.jsonl > decisions.jsonl

Output: one JSON object per decision: {\"allow\", \"status\", \"reason\", ...identity}.
Batch lines look like {\"id\", \"token\", \"now\", \"method\", \"path\", \"headers\", \"client_ip\"}
(all optional; headers as an object or a list of [name, value] pairs). Each input line gets
exactly one output line, in order, echoing its id; an invalid line gets {\"id\", \"line\", \"error\"}.
Rate limits count within this one process: a batch spends its buckets as one sidecar would
(on this machine's clock), so the lines after a burst are 429 rate_limited.

Exit status: 0 allowed, 1 denied, 2 usage or policy error.
With --batch: 0 when every line was a valid request, 2 otherwise.";

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about = ABOUT, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decide a request (or a batch of JSON-line requests) against a policy.
    #[command(after_help = CHECK_HELP)]
    Check(CheckArgs),
    /// Token tooling: mint service tokens and development JWTs, create and hash API keys, verify
    /// and inspect JWTs, plan key rotations.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Policy tooling.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run the sidecar: Envoy ext_authz over gRPC and HTTP, with hot reload and metrics.
    #[command(after_help = SERVE_HELP)]
    Serve(Box<ServeArgs>),
    /// Revoke a token id, service token id, API key id, or every credential of a subject.
    #[command(after_help = REVOKE_HELP)]
    Revoke(revocations::RevokeArgs),
    /// Undo a revocation.
    Unrevoke(revocations::UnrevokeArgs),
    /// List or prune revocations.
    #[command(subcommand)]
    Revocations(revocations::RevocationsCommand),
    /// Database tooling (the Postgres revocation store).
    #[command(subcommand)]
    Db(revocations::DbCommand),
    /// Write the embedded Portcullis component, optionally with a policy pre-installed.
    #[command(after_help = COMPONENT_HELP)]
    Component(ComponentArgs),
    /// Spin tooling: build the Spin component with a policy pre-installed.
    #[command(subcommand)]
    Spin(SpinCommand),
}

#[derive(Debug, Subcommand)]
enum SpinCommand {
    /// Compile a policy into the Spin component (wizer), with build-time defaults for its
    /// settings; application variables override the defaults at run time.
    #[command(after_help = SPIN_BUILD_HELP)]
    Build(SpinBuildArgs),
}

const SPIN_BUILD_HELP: &str = "\
The component comes from `cargo build -p portcullis-spin --target wasm32-wasip2 --profile guest`
(target/wasm32-wasip2/guest/portcullis_spin.wasm; add `--no-default-features` for the build that
imports nothing Spin-specific and runs under `wasmtime serve`). Settings (docs/spin.md): upstream,
client_address_header, revocations_feed, revocations_credential, revocations_poll_ms,
revocations_stale_after_ms, revocations_stale_mode, revocations_store, signature_cache_store,
keys_feed, keys_poll_ms, keys_store, fixed_now. With --fetch-keys the key sets of the policy's
network sources (jwks_uri, discovery) are fetched now and compiled in (docs/keys.md).

Examples:
  portcullis spin build --component target/wasm32-wasip2/guest/portcullis_spin.wasm \\
      --policy policies/api-gateway.yaml --set upstream=http://127.0.0.1:8080 -o gate.wasm";

#[derive(Debug, Args)]
struct SpinBuildArgs {
    /// The Spin component, as cargo built it.
    #[arg(long, value_name = "FILE")]
    component: PathBuf,
    /// The policy to compile in (YAML or JSON; referenced files are read relative to it).
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// A setting's build-time default, `NAME=VALUE` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = setting)]
    settings: Vec<(String, String)>,
    /// Where to write the component.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,
    #[command(flatten)]
    fetch: FetchKeys,
}

/// Key sets from the network, fetched once, now.
#[derive(Debug, Args)]
struct FetchKeys {
    /// Fetch the key sets the policy names in the network (`jwks_uri`, `discovery`) now, over
    /// HTTPS, and carry them (a source that cannot be fetched is an error). Without it such
    /// issuers answer `keys_unavailable` until the runtime gets their keys.
    #[arg(long)]
    fetch_keys: bool,
    /// With --fetch-keys: a PEM file of CA certificates trusted beside the system's roots.
    #[arg(long, value_name = "FILE", requires = "fetch_keys")]
    jwks_ca_file: Option<PathBuf>,
}

impl FetchKeys {
    /// `bundle` with its network key sets, when asked for.
    fn apply(&self, bundle: policy_files::PolicyBundle) -> Result<policy_files::PolicyBundle, Failure> {
        if !self.fetch_keys {
            return Ok(bundle);
        }
        let sources = bundle.remote_key_sources()?;
        let options = crate::remote_keys::KeyOptions { ca_file: self.jwks_ca_file.clone(), ..Default::default() };
        let keys = crate::remote_keys::RemoteKeys::new(options).map_err(|e| Failure::new("network", e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::new("runtime", e))?;
        let mut fetched = std::collections::BTreeMap::new();
        for source in &sources {
            let set = rt
                .block_on(keys.fetch(source))
                .map_err(|e| Failure::msg("network", format!("cannot fetch the key set of {}: {e}", source.url)))?;
            fetched.insert(source.url.clone(), set.jwks);
        }
        Ok(policy_files::PolicyBundle { bundle: bundle.bundle.with_remote_keys(&fetched)?, path: bundle.path })
    }
}

fn setting(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once('=').ok_or("expected NAME=VALUE")?;
    Ok((name.to_owned(), value.to_owned()))
}

const COMPONENT_HELP: &str = "\
The component implements wit/portcullis.wit (docs/wit.md); any component-model host can run it.
With --policy, the policy is compiled into the component's memory (wizer): every instance then
starts with it ready and decides through `decide-installed`.

Examples:
  portcullis component -o portcullis.wasm
  portcullis component --policy policies/example.yaml -o portcullis-example.wasm";

#[derive(Debug, Args)]
struct ComponentArgs {
    /// Pre-install this policy (YAML or JSON; referenced files are read relative to it).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Where to write the component.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,
}

const REVOKE_HELP: &str = "\
Without a database URL (--database-url or DATABASE_URL) the change goes to the revocations file
(revocations.jsonl by default), which a running `portcullis serve` watches. With Postgres, every
sidecar following the database sees the change within milliseconds.

Examples:
  portcullis revoke jti 2f1c9e7a --reason 'laptop stolen'
  portcullis revoke subject alice --tenant acme             # everything alice holds, issued up to now
  portcullis revoke api-key k_3HX9 --database-url postgres://portcullis@db/auth
  portcullis revocations list --format json";

const SERVE_HELP: &str = "\
Endpoints (all loopback by default):
  gRPC   envoy.service.auth.v3.Authorization/Check      --grpc-listen   (127.0.0.1:9191)
  HTTP   Envoy's HTTP ext_authz protocol                 --http-listen   (127.0.0.1:9192)
  admin  /healthz /readyz /metrics, /v1/revocations     --admin-listen  (127.0.0.1:9193)

Revocations: from Postgres when --database-url (or DATABASE_URL) is set: a snapshot at start,
then LISTEN/NOTIFY with catch-up from a cursor, so nothing is lost across reconnects. Otherwise
from --revocations-file, watched for changes. Past --revocation-stale-after-secs without a
confirmed sync the set is stale: `serve` keeps answering (metric and log), `fail-closed` denies
revocable credentials with 503 `revocation_stale`. The admin listener also serves
/v1/revocations (list, POST, DELETE) and /v1/revocations/feed, guarded by the policy plus the
admin scopes.

Keys from identity providers (an issuer's `jwks_uri`, or `discovery: true`) are fetched over
HTTPS at start, again when their cache lifetime ends (Cache-Control max-age, clamped to
--jwks-min-refresh-secs..--jwks-max-refresh-secs), and at once on an unknown `kid` (at most once
per --jwks-refetch-interval-secs per issuer). A failed fetch keeps the last good keys; an issuer
with no usable key answers 503 `keys_unavailable`. New keys become a new policy generation.

The policy and every file it references are re-read every --reload-interval-ms and on SIGHUP;
a policy that fails to load is logged and counted (portcullis_policy_reload_failures_total)
and the previous one stays in force. SIGTERM or SIGINT drains in-flight checks, then exits.
Any fault inside the component (trap, timeout, memory limit) is a 503 `internal_error`.

Example:
  portcullis serve --policy policies/api-gateway.yaml --audit-log -";

#[derive(Debug, Args)]
struct ServeArgs {
    /// Policy file (YAML or JSON). Referenced files are read relative to it.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// gRPC ext_authz listen address.
    #[arg(long, default_value = "127.0.0.1:9191")]
    grpc_listen: std::net::SocketAddr,
    /// HTTP ext_authz listen address.
    #[arg(long, default_value = "127.0.0.1:9192")]
    http_listen: std::net::SocketAddr,
    /// Do not serve the HTTP ext_authz protocol.
    #[arg(long)]
    no_http: bool,
    /// Admin listen address (/healthz, /readyz, /metrics).
    #[arg(long, default_value = "127.0.0.1:9193")]
    admin_listen: std::net::SocketAddr,
    /// Write audit events as JSON lines to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE|-")]
    audit_log: Option<PathBuf>,
    /// How often the policy is re-read, in milliseconds; 0 reloads only on SIGHUP.
    #[arg(long, default_value_t = 500)]
    reload_interval_ms: u64,
    /// Warm instances per policy generation. Default: the number of CPUs.
    #[arg(long)]
    workers: Option<usize>,
    /// `warm`: an instance per worker, reused; `fresh`: a new instance per check from a
    /// pre-initialised image (no state survives a request).
    #[arg(long, value_enum, default_value_t = crate::serve::authz::Isolation::Warm)]
    isolation: crate::serve::authz::Isolation,
    /// Longest a check may run inside the component before it is stopped (503).
    #[arg(long, default_value_t = 250)]
    call_timeout_ms: u64,
    /// Memory limit per instance, in MiB.
    #[arg(long, default_value_t = 128)]
    memory_limit_mb: usize,
    /// HTTP mode: the request header whose last entry is the client address Envoy saw
    /// (`x-forwarded-for` with `use_remote_address: true`). Empty: the address is unknown.
    #[arg(long, default_value = "x-forwarded-for")]
    http_client_address_header: String,
    /// Longest wait for in-flight checks at shutdown, in seconds.
    #[arg(long, default_value_t = 10)]
    drain_timeout_secs: u64,
    /// Open connections at most, per check listener (gRPC, HTTP). Past it a listener stops
    /// accepting until a connection closes. Keep `ulimit -n` above twice this plus the admin cap.
    #[arg(long, default_value_t = crate::serve::listen::ConnectionLimits::CHECKS.max_connections)]
    max_connections: usize,
    /// Open connections at most on the admin listener (kept apart, so a flood on the check
    /// listeners leaves health, metrics and revocation reachable).
    #[arg(long, default_value_t = crate::serve::listen::ConnectionLimits::ADMIN.max_connections)]
    admin_max_connections: usize,
    /// HTTP listeners: longest time to receive a request's headers, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    header_read_timeout_ms: u64,
    /// Verified signatures remembered (RSA/ECDSA, shared by every instance, emptied on reload;
    /// every claim is still checked on every request). 0 turns the cache off.
    #[arg(long, default_value_t = crate::serve::DEFAULT_SIGNATURE_CACHE_ENTRIES)]
    signature_cache_entries: usize,
    /// Rate-limit buckets kept at once, shared by every worker (16 bytes each; a bucket that
    /// has refilled frees its slot; when full, the bucket closest to full is dropped and
    /// counted in portcullis_rate_limit_evictions_total). Limits are per sidecar.
    #[arg(long, default_value_t = crate::rate_limits::DEFAULT_BUCKETS, value_parser = clap::value_parser!(u64).range(4..=1 << 26).map(|v| v as usize))]
    rate_limit_buckets: usize,
    /// HTTP listeners: close a connection idle this long, in seconds (set Envoy's
    /// `idle_timeout` for the ext_authz cluster below it). 0: never.
    #[arg(long, default_value_t = 60)]
    idle_timeout_secs: u64,
    #[command(flatten)]
    keys: KeyArgs,
    #[command(flatten)]
    revocation_store: revocations::StoreArgs,
    /// Seconds without a confirmed sync before revocations count as stale.
    #[arg(long, default_value_t = 30)]
    revocation_stale_after_secs: u64,
    /// What stale revocations mean: `serve` (metric and log) or `fail-closed` (503
    /// `revocation_stale` for revocable credentials).
    #[arg(
        long,
        default_value_t = crate::revocation::StaleMode::Serve,
        value_parser = stale_mode_parser(),
    )]
    revocation_stale_mode: crate::revocation::StaleMode,
    /// Postgres: heartbeat catch-up interval; file: how often it is checked. Milliseconds.
    /// Default: 1000 for Postgres, 250 for the file.
    #[arg(long)]
    revocation_poll_ms: Option<u64>,
    /// Scope the admin API's read endpoints (list, feed) require.
    #[arg(long, default_value = crate::serve::admin::READ_SCOPE)]
    admin_read_scope: String,
    /// Scope the admin API's write endpoints (revoke, unrevoke) require.
    #[arg(long, default_value = crate::serve::admin::WRITE_SCOPE)]
    admin_write_scope: String,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (tracing syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// Fetching identity providers' key sets (`jwks_uri`, `discovery`).
#[derive(Debug, Args)]
struct KeyArgs {
    /// PEM file of CA certificates trusted for key set fetches, beside the system's roots.
    #[arg(long, value_name = "FILE", env = "PORTCULLIS_JWKS_CA_FILE")]
    jwks_ca_file: Option<PathBuf>,
    /// Longest one key set request may take (connect, TLS, response), in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    jwks_timeout_ms: u64,
    /// Largest key set (or OpenID configuration) response accepted, in bytes.
    #[arg(long, default_value_t = 512 << 10)]
    jwks_max_bytes: usize,
    /// Shortest cache lifetime honoured, in seconds (a smaller `max-age`, `no-cache` and
    /// `no-store` count as this).
    #[arg(long, default_value_t = 60)]
    jwks_min_refresh_secs: u64,
    /// Longest cache lifetime honoured, in seconds.
    #[arg(long, default_value_t = 86_400)]
    jwks_max_refresh_secs: u64,
    /// Cache lifetime of a response without `max-age`, in seconds.
    #[arg(long, default_value_t = 600)]
    jwks_default_refresh_secs: u64,
    /// Least time between two refetches of one issuer's keys caused by unknown `kid`s, in
    /// seconds: a flood of made-up `kid`s costs the identity provider one request per interval.
    #[arg(long, default_value_t = 30)]
    jwks_refetch_interval_secs: u64,
    /// How long a request with an unknown `kid` waits for that refetch, in milliseconds (keep
    /// it under Envoy's ext_authz timeout); the refetch itself goes on.
    #[arg(long, default_value_t = 1_000)]
    jwks_refetch_wait_ms: u64,
}

impl KeyArgs {
    fn options(&self) -> crate::remote_keys::KeyOptions {
        use std::time::Duration;
        crate::remote_keys::KeyOptions {
            timeout: Duration::from_millis(self.jwks_timeout_ms.max(1)),
            max_bytes: self.jwks_max_bytes,
            min_refresh: Duration::from_secs(self.jwks_min_refresh_secs),
            max_refresh: Duration::from_secs(self.jwks_max_refresh_secs.max(self.jwks_min_refresh_secs)),
            default_refresh: Duration::from_secs(self.jwks_default_refresh_secs),
            refetch_interval: Duration::from_secs(self.jwks_refetch_interval_secs),
            refetch_wait: Duration::from_millis(self.jwks_refetch_wait_ms),
            ca_file: self.jwks_ca_file.clone(),
            ..crate::remote_keys::KeyOptions::default()
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Print the policy format's JSON Schema (for editors and CI validation).
    Schema,
    /// Print a policy and every file it references as one JSON object, `{"policy", "files"}`:
    /// the inline form the Envoy filter's configuration carries. The policy is compiled first;
    /// a policy that does not load prints nothing. Secrets in referenced files are included:
    /// treat the output like them.
    Bundle {
        /// The policy file.
        file: PathBuf,
        #[command(flatten)]
        fetch: FetchKeys,
    },
    /// Check a policy: load errors, plus what loads but deserves a look. Exit 1 on errors.
    #[command(after_help = LINT_HELP)]
    Lint {
        /// The policy file.
        file: PathBuf,
        /// Production rules: inline secrets and `insecure_*` switches become errors.
        #[arg(long)]
        production: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Decide one request and show every step: route, credential, each requirement, rules.
    #[command(after_help = EXPLAIN_HELP)]
    Explain {
        /// The policy file.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The request as JSON (the `check --batch` line format), or `@FILE`.
        #[arg(long, value_name = "JSON|@FILE")]
        request: Option<String>,
        #[command(flatten)]
        req: RequestArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// Output format for people or programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// Human-readable lines.
    Text,
    /// JSON.
    Json,
}

const LINT_HELP: &str = "\
Findings print as `<severity>[<code>]: <path>: <message>`, errors first.
Codes: policy_syntax, policy_invalid, policy_file (the policy does not load), leeway_too_long,
missing_max_lifetime, insecure_switch, inline_secret, service_token_wildcards, wildcard_grant,
no_routes, public_catch_all, unused_role, unreachable_route, route_always_denied, shadowed_rule.

Exit status: 0 no errors (warnings allowed), 1 errors, 2 the file could not be read.";

const EXPLAIN_HELP: &str = "\
Examples:
  portcullis policy explain --policy policies/saas.yaml --path /v1/orgs/acme/projects/p1 \\
      --token \"$(cat token.jwt)\" --now 1800000000
  portcullis policy explain --policy p.yaml --request '{\"path\":\"/admin\",\"headers\":{\"X-API-Key\":\"ask_...\"}}'

Exit status: 0 allowed, 1 denied, 2 usage or policy error.";

/// A request given with flags.
#[derive(Debug, Args)]
struct RequestArgs {
    /// A bearer credential, sent as `Authorization: Bearer`.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// The time of the decision, in Unix seconds. Default: the system clock.
    #[arg(long, value_name = "UNIX_SECONDS")]
    now: Option<i64>,
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request path, optionally with a query string.
    #[arg(long, default_value = "/")]
    path: String,
    /// Request host (`:authority`).
    #[arg(long, default_value = "")]
    host: String,
    /// A request header, `Name: value`. Repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// The client address, as the proxy saw it.
    #[arg(long, value_name = "IP")]
    client_ip: Option<IpAddr>,
}

impl RequestArgs {
    fn into_request(self, now: i64) -> OwnedRequest {
        let mut headers = self.headers;
        if let Some(t) = self.token {
            headers.push(("Authorization".into(), format!("Bearer {t}")));
        }
        RequestParts::new(&self.method, &self.path, &self.host)
            .headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
            .peer(self.client_ip)
            .build(self.now.unwrap_or(now))
    }
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// Policy file (YAML or JSON). Referenced files are read relative to it.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// A bearer credential (JWT, service token or API key), sent as `Authorization: Bearer`.
    #[arg(long, value_name = "TOKEN", conflicts_with = "batch")]
    token: Option<String>,
    /// Decide every JSON line of FILE (`-` for stdin) and print one decision per line.
    #[arg(long, value_name = "FILE|-")]
    batch: Option<String>,
    /// The time of the decision, in Unix seconds. Default: the system clock.
    #[arg(long, value_name = "UNIX_SECONDS")]
    now: Option<i64>,
    /// Request method.
    #[arg(long, default_value = "GET", conflicts_with = "batch")]
    method: String,
    /// Request path, optionally with a query string.
    #[arg(long, default_value = "/", conflicts_with = "batch")]
    path: String,
    /// Request host (`:authority`).
    #[arg(long, default_value = "", conflicts_with = "batch")]
    host: String,
    /// A request header, `Name: value`. Repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE", value_parser = parse_header, conflicts_with = "batch")]
    headers: Vec<(String, String)>,
    /// The client address, as the proxy saw it.
    #[arg(long, value_name = "IP", conflicts_with = "batch")]
    client_ip: Option<IpAddr>,
    /// Which engine decides: the WebAssembly component (what the sidecar runs) or the core
    /// compiled natively.
    #[arg(long, value_enum, default_value_t = EngineKind::Component)]
    engine: EngineKind,
}

/// Where decisions are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EngineKind {
    /// The embedded Portcullis component, in wasmtime.
    Component,
    /// The decision core, compiled into this binary.
    Native,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint a service token with the policy's active service key.
    Service {
        /// Policy file holding the `service_tokens` section.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// `worker_id`: must equal the worker header on each request.
        #[arg(long)]
        worker_id: String,
        /// `aud`: one of the policy's service token audiences.
        #[arg(long = "aud")]
        audience: String,
        /// A scope to grant. Repeatable.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Lifetime in seconds (at most the policy's max_lifetime_seconds).
        #[arg(long, default_value_t = 300)]
        ttl: u32,
        /// `jti`. Default: 128 random bits.
        #[arg(long)]
        jti: Option<String>,
        /// `iat`, in Unix seconds. Default: the system clock.
        #[arg(long)]
        now: Option<i64>,
        /// `nbf`, in Unix seconds.
        #[arg(long)]
        not_before: Option<i64>,
    },
    /// Mint a JWT for development with a key the policy trusts: an HMAC secret from the policy's
    /// key files (by `--kid`), or a PEM private key (`--key`). Refused unless the policy accepts
    /// it as a credential. Never for production: real tokens come from your identity provider.
    Jwt(JwtArgs),
    /// Create a random API key; prints {key, prefix, sha256}. Store only prefix and sha256.
    ApiKey {
        /// Type prefix (the policy's `api_keys.prefix`).
        #[arg(long, default_value = "ask_")]
        prefix: String,
        /// The policy's `api_keys.prefix_length`.
        #[arg(long, default_value_t = 12)]
        prefix_length: usize,
        /// Random characters after the type prefix.
        #[arg(long, default_value_t = 40)]
        length: usize,
    },
    /// Print the lookup prefix and SHA-256 of an API key read from stdin (keeps it out of
    /// shell history).
    HashApiKey {
        /// The policy's `api_keys.prefix_length`.
        #[arg(long, default_value_t = 12)]
        prefix_length: usize,
    },
    /// Verify a JWT against a policy and show each check: passed, failed (with its reason), or
    /// not reached. Exits 0 when the token is accepted as a credential, 1 when not.
    Verify {
        /// Policy file naming the issuer and its keys.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The time to verify at, in Unix seconds. Default: the system clock.
        #[arg(long)]
        now: Option<i64>,
        /// The request path (a route may accept only some issuers). Default `/`.
        #[arg(long, default_value = "/")]
        path: String,
        /// The token.
        token: String,
    },
    /// Plan a key rotation: which key signs, which verify, and the earliest time each other
    /// key may be removed (signing start + maximum token lifetime + leeway).
    RotationPlan {
        /// Policy file.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The JWT issuer whose keys rotate. Without it: the service token keys.
        #[arg(long)]
        issuer: Option<String>,
        /// The key that signs new tokens (`kid`, or the service key id). Default for service
        /// tokens: the first key, which is the one that signs.
        #[arg(long)]
        signing: Option<String>,
        /// When that key started signing, in Unix seconds. Default: the system clock.
        #[arg(long)]
        since: Option<i64>,
    },
    /// Show a JWT's header and payload. Nothing is verified.
    Inspect {
        /// The token.
        token: String,
    },
}

/// `portcullis token jwt`.
#[derive(Debug, Args)]
struct JwtArgs {
    /// Policy file naming the issuer.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// `iss`: one of the policy's issuers.
    #[arg(long)]
    issuer: String,
    /// `kid` of the signing key (an `oct` key in the policy's key files unless `--key`).
    #[arg(long)]
    kid: String,
    /// PEM private key (RSA, EC or Ed25519) for asymmetric issuers.
    #[arg(long, value_name = "PEM")]
    key: Option<PathBuf>,
    /// `alg`. Default: HS256 for an HMAC secret, RS256 for `--key`.
    #[arg(long, value_parser = parse_alg)]
    alg: Option<jsonwebtoken::Algorithm>,
    /// `sub`.
    #[arg(long = "sub", default_value = "dev-user")]
    subject: String,
    /// `aud`: one of the issuer's audiences.
    #[arg(long = "aud")]
    audience: String,
    /// A scope to grant (joined into `scope`). Repeatable.
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// A role (into `roles`). Repeatable.
    #[arg(long = "role")]
    roles: Vec<String>,
    /// `tenant`.
    #[arg(long)]
    tenant: Option<String>,
    /// `email`.
    #[arg(long)]
    email: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u32,
    /// `jti` (what `portcullis revoke jti` names). Default: 128 random bits.
    #[arg(long)]
    jti: Option<String>,
    /// `iat`, in Unix seconds. Default: the system clock.
    #[arg(long)]
    now: Option<i64>,
}

impl JwtArgs {
    fn into_request(self, private_key: Option<Vec<u8>>) -> token::JwtRequest {
        token::JwtRequest {
            issuer: self.issuer,
            kid: self.kid,
            private_key,
            alg: self.alg,
            subject: self.subject,
            audience: self.audience,
            scopes: self.scopes,
            roles: self.roles,
            tenant: self.tenant,
            email: self.email,
            ttl: self.ttl,
            jti: self.jti,
            now: self.now.unwrap_or_else(crate::unix_now),
        }
    }
}

fn parse_alg(s: &str) -> Result<jsonwebtoken::Algorithm, String> {
    s.parse().map_err(|_| format!("unknown algorithm `{s}` (HS256, RS256, ES256, EdDSA, ...)"))
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once(':').ok_or("expected `Name: value`")?;
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err("the header name must be a single word".into());
    }
    Ok((name.to_owned(), value.trim_start().to_owned()))
}

/// A failure with its stable code, printed as `error[code]: message`.
pub(crate) type Failure = crate::error::Error;

fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| if newline { out.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| out.flush())
        .map_err(|e| Failure::msg("io", format!("cannot write to standard output: {e}")))
}

fn usage(error: anyhow::Error) -> Failure {
    Failure::new("usage", error)
}

/// Runs the command line and returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(f) => {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error[{}]: {f}", f.code());
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        Command::Check(args) => check(args),
        Command::Token(t) => token_command(t),
        Command::Serve(args) => serve(*args),
        Command::Revoke(args) => revocations::revoke(args),
        Command::Unrevoke(args) => revocations::unrevoke(args),
        Command::Revocations(cmd) => revocations::revocations(cmd),
        Command::Db(cmd) => revocations::db(cmd),
        Command::Component(args) => component(&args),
        Command::Spin(SpinCommand::Build(args)) => spin_build(&args),
        Command::Policy(PolicyCommand::Lint { file, production, format }) => lint(&file, production, format),
        Command::Policy(PolicyCommand::Explain { policy, request, req, format }) => {
            explain(&policy, request, req, format)
        }
        Command::Policy(PolicyCommand::Bundle { file, fetch }) => {
            let bundle = fetch.apply(policy_files::PolicyBundle::read(&file)?)?;
            bundle.compile()?;
            outln!("{}", crate::policy_files::inline_json(&bundle))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Schema) => {
            let schema = serde_json::to_string_pretty(&portcullis_core::json_schema())
                .context("cannot render the schema")
                .map_err(usage)?;
            outln!("{schema}")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check(args: CheckArgs) -> Result<ExitCode, Failure> {
    let bundle = policy_files::PolicyBundle::read(&args.policy)?;
    match args.engine {
        EngineKind::Native => check_with(&mut &bundle.compile()?, args),
        EngineKind::Component => {
            // The runtime stays alive beside its worker: it drives the call deadlines.
            let (_runtime, mut worker) = component_worker(&bundle)?;
            check_with(&mut worker, args)
        }
    }
}

fn component(args: &ComponentArgs) -> Result<ExitCode, Failure> {
    let wasm = match &args.policy {
        None => crate::runtime::COMPONENT.to_vec(),
        Some(policy) => {
            let bundle = policy_files::PolicyBundle::read(policy)?;
            // The native loader names the failure with its stable code; the guest loads the same way.
            bundle.compile()?;
            crate::preinit::preinitialize(&bundle).map_err(|error| Failure::new("runtime", error))?
        }
    };
    std::fs::write(&args.output, &wasm)
        .with_context(|| format!("cannot write {}", args.output.display()))
        .map_err(|error| Failure::new("io", error))?;
    Ok(ExitCode::SUCCESS)
}

fn spin_build(args: &SpinBuildArgs) -> Result<ExitCode, Failure> {
    let component = std::fs::read(&args.component)
        .with_context(|| format!("cannot read {}", args.component.display()))
        .map_err(|error| Failure::new("io", error))?;
    let bundle = args.fetch.apply(policy_files::PolicyBundle::read(&args.policy)?)?;
    bundle.compile()?;
    let wasm = crate::preinit::preinitialize_spin(&component, &bundle, &args.settings).map_err(|error| {
        // The component's own refusals come as `[code] message` (an unknown setting, say).
        match error.downcast_ref::<crate::preinit::Refused>() {
            Some(refused) => {
                let known = ["config_invalid", "policy_syntax", "policy_invalid", "policy_file"];
                Failure::msg(known.into_iter().find(|c| *c == refused.code).unwrap_or("runtime"), &refused.message)
            }
            None => Failure::new("runtime", error),
        }
    })?;
    std::fs::write(&args.output, &wasm)
        .with_context(|| format!("cannot write {}", args.output.display()))
        .map_err(|error| Failure::new("io", error))?;
    Ok(ExitCode::SUCCESS)
}

/// The embedded component with the bundle's policy loaded.
fn component_worker(
    bundle: &policy_files::PolicyBundle,
) -> Result<(crate::runtime::Runtime, crate::runtime::Worker), Failure> {
    use crate::runtime::{Runtime, RuntimeConfig, WorkerError};
    // One worker: two slots are plenty, and keep the address space small.
    let config = RuntimeConfig { max_instances: 2, ..RuntimeConfig::default() };
    let runtime = Runtime::embedded(config).map_err(|error| Failure::new("runtime", error))?;
    let worker = runtime.worker(bundle, crate::rate_limits::local()).map_err(|e| match e {
        WorkerError::Policy(e) => Failure::msg(e.code(), format!("{e} (in {})", bundle.path.display())),
        WorkerError::Fault(f) => f.into(),
    })?;
    Ok((runtime, worker))
}

fn check_with(decider: &mut dyn Decider, args: CheckArgs) -> Result<ExitCode, Failure> {
    let now = args.now;
    let clock = move || now.unwrap_or_else(crate::unix_now);

    if let Some(source) = &args.batch {
        let input: Box<dyn BufRead> = if source == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            let f = std::fs::File::open(source).with_context(|| format!("cannot open {source}")).map_err(usage)?;
            Box::new(BufReader::new(f))
        };
        let out = std::io::BufWriter::new(std::io::stdout().lock());
        let stats = check::batch(decider, input, out, clock)
            .context("batch I/O failed")
            .map_err(|error| Failure::new("io", error))?;
        return Ok(if stats.invalid == 0 { ExitCode::SUCCESS } else { ExitCode::from(2) });
    }

    let mut headers = args.headers;
    if let Some(t) = args.token {
        headers.push(("Authorization".into(), format!("Bearer {t}")));
    }
    let request = RequestParts::new(&args.method, &args.path, &args.host)
        .headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
        .peer(args.client_ip)
        .build(clock());
    let decision = decider.decide(&request);
    let line = serde_json::to_string(&decision).context("cannot render the decision").map_err(usage)?;
    outln!("{line}")?;
    Ok(if decision.allowed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn serve(args: ServeArgs) -> Result<ExitCode, Failure> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log_level))
        .map_err(|e| usage(anyhow::anyhow!("--log-level: {e}")))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match args.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    let workers = args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let revocation = revocation_config(&args)?;
    let check_limits = listen_limits(&args, args.max_connections);
    let admin_limits = listen_limits(&args, args.admin_max_connections);
    let config = crate::serve::Config {
        policy: args.policy,
        grpc_listen: args.grpc_listen,
        http_listen: (!args.no_http).then_some(args.http_listen),
        admin_listen: args.admin_listen,
        audit_log: args.audit_log,
        reload_interval: (args.reload_interval_ms > 0)
            .then(|| std::time::Duration::from_millis(args.reload_interval_ms)),
        settings: crate::serve::authz::Settings {
            workers,
            isolation: args.isolation,
            runtime: crate::runtime::RuntimeConfig {
                call_timeout: std::time::Duration::from_millis(args.call_timeout_ms.max(1)),
                memory_limit: args.memory_limit_mb.saturating_mul(1 << 20),
                max_instances: u32::try_from(workers.saturating_mul(4).saturating_add(16)).unwrap_or(1024),
                ..crate::runtime::RuntimeConfig::default()
            },
        },
        client_address_header: Some(args.http_client_address_header).filter(|h| !h.is_empty()),
        drain_timeout: std::time::Duration::from_secs(args.drain_timeout_secs),
        revocations: std::sync::Arc::new(portcullis_core::NoRevocations),
        revocation: Some(revocation),
        clock: crate::serve::authz::system_clock(),
        check_limits,
        admin_limits,
        signature_cache_entries: args.signature_cache_entries,
        rate_limit_buckets: args.rate_limit_buckets,
        keys: args.keys.options(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| Failure::new("runtime", e))?;
    rt.block_on(async move {
        let sidecar = crate::serve::Sidecar::build(config).await.map_err(|error| Failure::new("startup", error))?;
        let handle = sidecar.serve().map_err(|error| Failure::new("startup", error))?;
        wait_for_stop_signal().await;
        tracing::info!("stop signal: draining");
        handle.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

fn listen_limits(args: &ServeArgs, max_connections: usize) -> crate::serve::listen::ConnectionLimits {
    use std::time::Duration;
    crate::serve::listen::ConnectionLimits {
        max_connections: max_connections.max(1),
        header_read_timeout: Duration::from_millis(args.header_read_timeout_ms.max(1)),
        idle_timeout: (args.idle_timeout_secs > 0).then(|| Duration::from_secs(args.idle_timeout_secs)),
    }
}

fn revocation_config(args: &ServeArgs) -> Result<crate::serve::RevocationConfig, Failure> {
    let store = args.revocation_store.store()?;
    let default_poll = match store {
        crate::revocation::Store::File(_) => 250,
        crate::revocation::Store::Postgres(_) => 1000,
    };
    let poll = std::time::Duration::from_millis(args.revocation_poll_ms.unwrap_or(default_poll).max(10));
    Ok(crate::serve::RevocationConfig {
        store,
        live: std::sync::Arc::new(crate::revocation::LiveRevocations::new(args.revocation_stale_mode)),
        freshness: crate::revocation::Freshness {
            stale_after: std::time::Duration::from_secs(args.revocation_stale_after_secs.max(1)),
            mode: args.revocation_stale_mode,
        },
        follow: crate::revocation::FollowOptions { poll, ..Default::default() },
        scopes: (args.admin_read_scope.clone(), args.admin_write_scope.clone()),
    })
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn lint(file: &std::path::Path, production: bool, format: Format) -> Result<ExitCode, Failure> {
    let text = policy_files::read_limited(file)
        .and_then(|b| String::from_utf8(b).map_err(|_| anyhow::anyhow!("{} is not UTF-8", file.display())))
        .map_err(|error| Failure::new("policy_io", error))?;
    let files = policy_files::DirFiles(policy_files::policy_dir(file));
    let findings = portcullis_core::lint::lint(&text, &files, production);
    let errors = findings.iter().filter(|f| f.severity == portcullis_core::lint::Severity::Error).count();
    match format {
        Format::Json => {
            let v = serde_json::json!({ "file": file, "errors": errors, "findings": findings });
            outln!("{v}")?;
        }
        Format::Text => {
            for f in &findings {
                outln!("{f}")?;
            }
            let warnings = findings.len() - errors;
            outln!("{}: {errors} error(s), {warnings} warning(s)", file.display())?;
        }
    }
    Ok(if errors == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn explain(
    path: &std::path::Path,
    request: Option<String>,
    args: RequestArgs,
    format: Format,
) -> Result<ExitCode, Failure> {
    let policy = policy_files::load(path)?;
    let now = crate::unix_now();
    let request = match request {
        Some(json) => {
            let text = match json.strip_prefix('@') {
                Some(f) => policy_files::read_limited(std::path::Path::new(f))
                    .and_then(|b| String::from_utf8(b).context("not UTF-8"))
                    .map_err(usage)?,
                None => json,
            };
            serde_json::from_str::<portcullis_adapter::request::RequestSpec>(&text)
                .context("--request is not a valid request object")
                .map_err(usage)?
                .to_owned_request(now)
        }
        None => args.into_request(now),
    };
    let (decision, x) = request.with_request(|r| policy.explain(r, &*crate::rate_limits::local()));
    match format {
        Format::Json => {
            let v = serde_json::json!({ "decision": decision, "explanation": x });
            outln!("{v}")?;
        }
        Format::Text => out!("{}", render_explanation(&request, &decision, &x))?,
    }
    Ok(if decision.allowed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn render_explanation(req: &OwnedRequest, d: &portcullis_core::Decision, x: &portcullis_core::Explanation) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let verdict = if d.allowed() { "ALLOW" } else { "DENY" };
    let _ = writeln!(
        s,
        "request:  {} {}{}",
        req.method,
        req.path,
        if req.query.is_empty() { String::new() } else { format!("?{}", req.query) }
    );
    let _ = writeln!(s, "decision: {verdict} {} {}", d.status(), d.reason);
    let route = match (&x.route, &x.route_path) {
        (Some(id), Some(p)) => format!("{id} ({p})"),
        _ => "none (the policy default applies)".into(),
    };
    let _ = writeln!(s, "route:    {route}");
    match (&x.authentication, &x.subject) {
        (Some(a), Some(sub)) => {
            let _ = writeln!(s, "credential: {a} (subject {sub})");
        }
        (Some(a), None) => {
            let _ = writeln!(s, "credential: {a}");
        }
        (None, _) => {
            let _ = writeln!(s, "credential: not examined");
        }
    }
    if !x.requirements.is_empty() {
        let _ = writeln!(s, "requirements:");
        for c in &x.requirements {
            let _ = writeln!(s, "  [{}] {}: {}", if c.held { " ok " } else { "FAIL" }, c.requirement, c.detail);
        }
    }
    if !x.rules.is_empty() {
        let _ = writeln!(s, "rules considered:");
        for r in &x.rules {
            let shadow = if r.shadow { ", shadow" } else { "" };
            let _ = writeln!(
                s,
                "  {} ({}, priority {}{shadow}): {}",
                r.id,
                r.effect,
                r.priority,
                if r.matched { "matched" } else { "no match" }
            );
        }
    }
    if let Some(rule) = &d.rule {
        let _ = writeln!(s, "decided by rule: {rule}");
    }
    if let Some(sh) = &d.shadow {
        let _ = writeln!(
            s,
            "shadow (not enforced): {}{}",
            sh.reason,
            sh.rule.as_ref().map(|r| format!(" by rule {r}")).unwrap_or_default()
        );
    }
    for n in &x.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

fn token_command(cmd: TokenCommand) -> Result<ExitCode, Failure> {
    let out = match cmd {
        TokenCommand::Service { policy, worker_id, audience, scopes, ttl, jti, now, not_before } => {
            let policy = policy_files::load(&policy)?;
            let req = token::ServiceTokenRequest {
                worker_id,
                audience,
                scopes,
                ttl,
                jti,
                now: now.unwrap_or_else(crate::unix_now),
                not_before,
            };
            token::mint_service(&policy, &req).map_err(usage)?
        }
        TokenCommand::Jwt(args) => {
            let bundle = policy_files::PolicyBundle::read(&args.policy)?;
            let compiled = bundle.compile()?;
            let private_key = match &args.key {
                Some(path) => Some(
                    crate::files::read_regular(path, 1 << 20)
                        .with_context(|| format!("cannot read the private key {}", path.display()))
                        .map_err(usage)?,
                ),
                None => None,
            };
            token::mint_jwt(&bundle, &compiled, &args.into_request(private_key)).map_err(usage)?
        }
        TokenCommand::ApiKey { prefix, prefix_length, length } => {
            let k = token::new_api_key(&prefix, prefix_length, length).map_err(usage)?;
            serde_json::to_string(&k).context("cannot render").map_err(usage)?
        }
        TokenCommand::HashApiKey { prefix_length } => {
            let mut key = String::new();
            std::io::stdin().read_line(&mut key).context("cannot read stdin").map_err(usage)?;
            let (prefix, sha256) =
                token::hash_api_key(key.trim_end_matches(['\r', '\n']), prefix_length).map_err(usage)?;
            serde_json::json!({ "prefix": prefix, "sha256": sha256 }).to_string()
        }
        TokenCommand::Verify { policy, now, path, token } => {
            let policy = policy_files::load(&policy)?;
            let (accepted, report) = token::verify(&policy, &token, &path, now.unwrap_or_else(crate::unix_now));
            outln!("{report}")?;
            return Ok(if accepted { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
        TokenCommand::RotationPlan { policy, issuer, signing, since } => {
            let policy = policy_files::load(&policy)?;
            let signing = match (signing, &issuer) {
                (Some(s), _) => s,
                (None, None) => policy
                    .service_tokens()
                    .and_then(|s| s.keys.first())
                    .map(|k| k.id.to_string())
                    .context("the policy has no service token keys")
                    .map_err(usage)?,
                (None, Some(_)) => {
                    return Err(usage(anyhow::anyhow!("--signing names the key that signs for the issuer")));
                }
            };
            let plan =
                token::rotation_plan(&policy, issuer.as_deref(), &signing, since.unwrap_or_else(crate::unix_now))
                    .map_err(usage)?;
            plan.to_string()
        }
        TokenCommand::Inspect { token } => {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "note: decoded only; the signature and claims were NOT verified");
            token::inspect(&token).map_err(usage)?.to_string()
        }
    };
    outln!("{out}")?;
    Ok(ExitCode::SUCCESS)
}

/// `--revocation-stale-mode`: the adapter kit's modes, with their names listed in `--help`.
fn stale_mode_parser() -> impl clap::builder::TypedValueParser<Value = crate::revocation::StaleMode> {
    PossibleValuesParser::new(["serve", "fail-closed"]).try_map(|s| s.parse::<crate::revocation::StaleMode>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_split_at_the_first_colon() {
        assert_eq!(parse_header("X-A: b: c").unwrap(), ("X-A".into(), "b: c".into()));
        assert_eq!(parse_header("X-A:").unwrap(), ("X-A".into(), String::new()));
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": v").is_err());
        assert!(parse_header("X A: v").is_err());
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
