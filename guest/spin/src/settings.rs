//! The component's settings: Spin application variables, over the defaults fixed at build
//! time (`portcullis spin build --set name=value`). Read per request (a fresh instance has no
//! memory of the last one); each is one host call.

use std::time::Duration;

use portcullis_adapter::revocation::StaleMode;

/// Every setting, by its variable name (Spin: lowercase letters, digits and underscores).
pub const NAMES: [&str; 15] = [
    UPSTREAM,
    CLIENT_ADDRESS_HEADER,
    FIXED_NOW,
    REVOCATIONS_FEED,
    REVOCATIONS_CREDENTIAL,
    REVOCATIONS_POLL_MS,
    REVOCATIONS_STALE_AFTER_MS,
    REVOCATIONS_STALE_MODE,
    REVOCATIONS_STORE,
    SIGNATURE_CACHE_STORE,
    KEYS_FEED,
    KEYS_POLL_MS,
    KEYS_STORE,
    RATE_LIMIT_STORE,
    RATE_LIMIT_SLOTS,
];

/// Where allowed requests go: `http://host:port` or `https://host`, with an optional path
/// prefix. Required.
pub const UPSTREAM: &str = "upstream";
/// A header the host in front writes with the client's address (Spin writes
/// `spin-client-addr`). WASI HTTP 0.2 tells a component nothing about its peer, so without it
/// rules on client addresses see no address (and do not match).
pub const CLIENT_ADDRESS_HEADER: &str = "client_address_header";
/// Decide at this Unix time instead of the clock (tests only).
pub const FIXED_NOW: &str = "fixed_now";
/// The sidecar's revocation feed, `http://host:port` (its admin listener). Unset: only the
/// policy's own `revoked` lists apply.
pub const REVOCATIONS_FEED: &str = "revocations_feed";
/// The `Authorization` value for the feed (a token with `portcullis:revocations:read`).
pub const REVOCATIONS_CREDENTIAL: &str = "revocations_credential";
/// How often the set is brought up to date, in milliseconds (default 1000).
pub const REVOCATIONS_POLL_MS: &str = "revocations_poll_ms";
/// Stale after this long without a confirmed sync, in milliseconds (default 10000).
pub const REVOCATIONS_STALE_AFTER_MS: &str = "revocations_stale_after_ms";
/// `serve` (keep deciding with the last set) or `fail-closed` (503) when stale.
pub const REVOCATIONS_STALE_MODE: &str = "revocations_stale_mode";
/// The key-value store holding the set (default `default`).
pub const REVOCATIONS_STORE: &str = "revocations_store";

/// The key-value store remembering valid signatures across instances (see
/// [`crate::signatures`]); unset: every request verifies its signature.
pub const SIGNATURE_CACHE_STORE: &str = "signature_cache_store";

/// The sidecar's admin listener, `http://host:port`, whose `GET /v1/keys` gives the key sets
/// of the policy's network sources (`jwks_uri`, `discovery`). Unset: the sets compiled in at
/// build time (`portcullis spin build --fetch-keys`), if any.
pub const KEYS_FEED: &str = "keys_feed";
/// How often the stored key sets are brought up to date, in milliseconds (default 5000).
pub const KEYS_POLL_MS: &str = "keys_poll_ms";
/// The key-value store holding them (default `default`).
pub const KEYS_STORE: &str = "keys_store";

/// The key-value store counting the policy's rate limits, shared by every instance of the
/// app (default `default`). Spin's store has no compare-and-swap, so concurrent instances can
/// spend the same token: a limit may admit up to the number of concurrent requests more in a
/// burst (docs/rate-limits.md).
pub const RATE_LIMIT_STORE: &str = "rate_limit_store";
/// How many buckets the store keeps at most (a power of two, default 65536): a key hashes to
/// one slot, and a new key takes a slot over.
pub const RATE_LIMIT_SLOTS: &str = "rate_limit_slots";

/// A bad setting: its name and what is wrong, never its value (it may be a credential).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    /// The variable.
    pub name: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[config_invalid] setting `{}`: {}", self.name, self.problem)
    }
}

impl std::error::Error for SettingsError {}

fn error(name: &'static str, problem: impl Into<String>) -> SettingsError {
    SettingsError { name, problem: problem.into() }
}

/// An `http` or `https` URL split for WASI HTTP's outgoing request.
///
/// Written here rather than with the `url` crate: only `scheme://authority[/path]` is
/// accepted (no user info, query or fragment), which is three `split`s, and the component stays
/// free of IDNA tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `true` for `https`.
    pub https: bool,
    /// `host[:port]`.
    pub authority: String,
    /// The path prefix, without a trailing `/` (empty for none).
    pub path: String,
}

impl Url {
    /// Parses `http://host[:port][/prefix]` or `https://…`.
    pub fn parse(name: &'static str, text: &str) -> Result<Url, SettingsError> {
        let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(error(name, "not an http:// or https:// URL"));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let bad = |c: char| c.is_ascii_control() || c.is_ascii_whitespace() || "@?#/\\".contains(c);
        if authority.is_empty() || authority.contains(bad) {
            return Err(error(name, "the host is missing or holds characters a host cannot"));
        }
        if path.contains(|c: char| c.is_ascii_control() || c.is_ascii_whitespace() || c == '?' || c == '#') {
            return Err(error(name, "the path may not hold a query, a fragment, spaces or control characters"));
        }
        Ok(Url { https, authority: authority.to_owned(), path: path.trim_end_matches('/').to_owned() })
    }

    /// The target for a request to `path_with_query` under this URL's path.
    pub fn target(&self, path_with_query: &str) -> String {
        let rest = if path_with_query.starts_with('/') { path_with_query } else { "/" };
        format!("{}{rest}", self.path)
    }
}

/// The revocation feed, when one is configured.
#[derive(Clone, PartialEq, Eq)]
pub struct Feed {
    /// The sidecar's admin listener.
    pub url: Url,
    /// `Authorization` for it.
    pub credential: String,
    /// How often the stored set is brought up to date.
    pub poll: Duration,
    /// Staleness bound.
    pub stale_after: Duration,
    /// What a stale set does.
    pub mode: StaleMode,
    /// Key-value store label.
    pub store: String,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("url", &self.url)
            .field("credential", &"<redacted>")
            .field("poll", &self.poll)
            .field("stale_after", &self.stale_after)
            .field("mode", &self.mode)
            .field("store", &self.store)
            .finish()
    }
}

/// Following the sidecar's key sets, when configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysFeed {
    /// The sidecar's admin listener.
    pub url: Url,
    /// How often the stored sets are brought up to date.
    pub poll: Duration,
    /// Key-value store label.
    pub store: String,
}

/// Every setting, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// See [`UPSTREAM`].
    pub upstream: Url,
    /// See [`CLIENT_ADDRESS_HEADER`].
    pub client_address_header: Option<String>,
    /// See [`FIXED_NOW`].
    pub fixed_now: Option<i64>,
    /// See [`REVOCATIONS_FEED`].
    pub feed: Option<Feed>,
    /// See [`SIGNATURE_CACHE_STORE`].
    pub signature_store: Option<String>,
    /// See [`KEYS_FEED`].
    pub keys: Option<KeysFeed>,
    /// See [`RATE_LIMIT_STORE`].
    pub rate_limit_store: String,
    /// See [`RATE_LIMIT_SLOTS`].
    pub rate_limit_slots: u64,
}

fn number<T: std::str::FromStr>(name: &'static str, text: Option<String>, default: T) -> Result<T, SettingsError> {
    text.map_or(Ok(default), |t| t.trim().parse().map_err(|_| error(name, "not a whole number in range")))
}

impl Settings {
    /// Reads every setting through `get` (a variable, else the build-time default; `None` when
    /// neither is set).
    pub fn read(get: impl Fn(&'static str) -> Option<String>) -> Result<Settings, SettingsError> {
        let upstream = get(UPSTREAM).ok_or_else(|| error(UPSTREAM, "required, and not set"))?;
        let upstream = Url::parse(UPSTREAM, &upstream)?;
        let client_address_header = get(CLIENT_ADDRESS_HEADER).filter(|h| !h.is_empty());
        let fixed_now = get(FIXED_NOW).map(|t| number(FIXED_NOW, Some(t), 0)).transpose()?;
        let feed = match get(REVOCATIONS_FEED).filter(|f| !f.is_empty()) {
            None => None,
            Some(url) => {
                let url = Url::parse(REVOCATIONS_FEED, &url)?;
                let credential = get(REVOCATIONS_CREDENTIAL)
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| error(REVOCATIONS_CREDENTIAL, "required with a feed, and not set"))?;
                let poll = number(REVOCATIONS_POLL_MS, get(REVOCATIONS_POLL_MS), 1000u64)?;
                let stale = number(REVOCATIONS_STALE_AFTER_MS, get(REVOCATIONS_STALE_AFTER_MS), 10_000u64)?;
                if !(50..=3_600_000).contains(&poll) {
                    return Err(error(REVOCATIONS_POLL_MS, "outside 50..=3600000"));
                }
                if stale < poll {
                    return Err(error(REVOCATIONS_STALE_AFTER_MS, "shorter than the poll period"));
                }
                let mode = get(REVOCATIONS_STALE_MODE)
                    .map_or(Ok(StaleMode::Serve), |m| m.parse())
                    .map_err(|e: String| error(REVOCATIONS_STALE_MODE, e))?;
                let store = get(REVOCATIONS_STORE).filter(|s| !s.is_empty()).unwrap_or_else(|| "default".into());
                Some(Feed {
                    url,
                    credential,
                    poll: Duration::from_millis(poll),
                    stale_after: Duration::from_millis(stale),
                    mode,
                    store,
                })
            }
        };
        let signature_store = get(SIGNATURE_CACHE_STORE).filter(|s| !s.is_empty());
        let keys = match get(KEYS_FEED).filter(|f| !f.is_empty()) {
            None => None,
            Some(url) => {
                let url = Url::parse(KEYS_FEED, &url)?;
                let poll = number(KEYS_POLL_MS, get(KEYS_POLL_MS), 5000u64)?;
                if !(50..=3_600_000).contains(&poll) {
                    return Err(error(KEYS_POLL_MS, "outside 50..=3600000"));
                }
                let store = get(KEYS_STORE).filter(|s| !s.is_empty()).unwrap_or_else(|| "default".into());
                Some(KeysFeed { url, poll: Duration::from_millis(poll), store })
            }
        };
        let rate_limit_store = get(RATE_LIMIT_STORE).filter(|s| !s.is_empty()).unwrap_or_else(|| "default".into());
        let rate_limit_slots = number(RATE_LIMIT_SLOTS, get(RATE_LIMIT_SLOTS), 1u64 << 16)?;
        if !rate_limit_slots.is_power_of_two() || rate_limit_slots > 1 << 24 {
            return Err(error(RATE_LIMIT_SLOTS, "a power of two, at most 16777216"));
        }
        Ok(Settings {
            upstream,
            client_address_header,
            fixed_now,
            feed,
            signature_store,
            keys,
            rate_limit_store,
            rate_limit_slots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::read(|n| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| (*v).to_owned()))
    }

    #[test]
    fn urls_split_into_scheme_authority_and_prefix() {
        let u = Url::parse(UPSTREAM, "http://127.0.0.1:8080").unwrap();
        assert_eq!((u.https, u.authority.as_str(), u.path.as_str()), (false, "127.0.0.1:8080", ""));
        assert_eq!(u.target("/v1/orders?x=1"), "/v1/orders?x=1");
        let u = Url::parse(UPSTREAM, "https://api.internal/base/").unwrap();
        assert_eq!((u.https, u.authority.as_str(), u.path.as_str()), (true, "api.internal", "/base"));
        assert_eq!(u.target("/v1"), "/base/v1");
        assert_eq!(u.target(""), "/base/");
        for bad in ["ftp://x", "http://", "http://user@host", "http://h/p?q", "http://h/a b", "http://h\r\n/"] {
            assert!(Url::parse(UPSTREAM, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_upstream_is_required_and_the_feed_needs_a_credential() {
        assert_eq!(read(&[]).unwrap_err().name, UPSTREAM);
        let s = read(&[(UPSTREAM, "http://u:1")]).unwrap();
        assert_eq!((s.feed, s.client_address_header, s.fixed_now), (None, None, None));
        let e = read(&[(UPSTREAM, "http://u:1"), (REVOCATIONS_FEED, "http://f:2")]).unwrap_err();
        assert_eq!(e.name, REVOCATIONS_CREDENTIAL);
        let s = read(&[
            (UPSTREAM, "http://u:1"),
            (REVOCATIONS_FEED, "http://f:2"),
            (REVOCATIONS_CREDENTIAL, "Bearer s3cret"),
        ])
        .unwrap();
        let feed = s.feed.unwrap();
        assert_eq!(
            (feed.poll, feed.stale_after, feed.mode),
            (Duration::from_secs(1), Duration::from_secs(10), StaleMode::Serve)
        );
        assert!(!format!("{feed:?}").contains("s3cret"));
    }

    #[test]
    fn bad_numbers_and_modes_are_named_without_their_values() {
        let base = [(UPSTREAM, "http://u:1"), (REVOCATIONS_FEED, "http://f:2"), (REVOCATIONS_CREDENTIAL, "c")];
        for (name, value) in [
            (REVOCATIONS_POLL_MS, "soon"),
            (REVOCATIONS_POLL_MS, "10"),
            (REVOCATIONS_STALE_AFTER_MS, "100"),
            (REVOCATIONS_STALE_MODE, "maybe"),
        ] {
            let mut pairs = base.to_vec();
            pairs.push((name, value));
            let e = read(&pairs).unwrap_err();
            assert_eq!(e.name, name);
            assert!(!e.to_string().contains(value) || name == REVOCATIONS_STALE_MODE, "{e}");
        }
        assert_eq!(read(&[(UPSTREAM, "http://u:1"), (FIXED_NOW, "x")]).unwrap_err().name, FIXED_NOW);
        for slots in ["0", "1000", "33554432"] {
            assert_eq!(
                read(&[(UPSTREAM, "http://u:1"), (RATE_LIMIT_SLOTS, slots)]).unwrap_err().name,
                RATE_LIMIT_SLOTS
            );
        }
        let s = read(&[(UPSTREAM, "http://u:1"), (RATE_LIMIT_SLOTS, "1024")]).unwrap();
        assert_eq!((s.rate_limit_slots, s.rate_limit_store.as_str()), (1024, "default"));
    }
}
