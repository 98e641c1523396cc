//! Key sets from the sidecar (`GET /v1/keys`), kept in Spin's key-value store for the issuers
//! whose keys come from the network (`jwks_uri`, `discovery`).
//!
//! One record holds the sidecar's generation, when it was last asked, and the sets. A request
//! reads it; when the poll period has passed since the last ask it asks first (`If-None-Match`
//! with the stored generation: unchanged is a 304), and stores what it learned. A failed ask
//! keeps the stored sets and waits a poll period before the next. When the stored sets differ
//! from those compiled into the image (`portcullis spin build --fetch-keys`, or none), the
//! request compiles the policy with them: correct at once, at the cost of a compile per
//! request until the component is built again with the new keys.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::revocations::Store;

/// The record's key.
pub const RECORD: &str = "portcullis:keys";

/// Key sets by source URL.
pub type Sets = BTreeMap<String, Vec<u8>>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// The sidecar's generation of the sets (its `ETag`); `None` until it answered once.
    generation: Option<u64>,
    /// When the sidecar was last asked, in milliseconds since the epoch.
    asked_ms: u64,
    /// The sets, by source URL.
    sets: BTreeMap<String, serde_json::Value>,
}

/// The sidecar's answer.
#[derive(Deserialize)]
struct Answer {
    generation: u64,
    sets: BTreeMap<String, serde_json::Value>,
}

/// How the sidecar is asked.
pub trait KeysTransport {
    /// `GET /v1/keys` with `If-None-Match`: `Ok(None)` for 304, else the body.
    fn fetch(&mut self, if_none_match: Option<&str>) -> Result<Option<Vec<u8>>, String>;
}

/// The key sets for this request (`None` before the sidecar ever answered), asking the
/// sidecar first when `poll` has passed since the last ask; the error of a failed ask or store
/// call (the stored sets stay).
pub fn current(
    store: &dyn Store,
    poll: Duration,
    now: Duration,
    transport: &mut dyn KeysTransport,
) -> (Option<Sets>, Option<String>) {
    let mut saved: Saved = match store.get(RECORD) {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Ok(None) => Saved::default(),
        Err(e) => return (None, Some(e)),
    };
    let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
    let poll_ms = u64::try_from(poll.as_millis()).unwrap_or(u64::MAX);
    let mut error = None;
    if saved.generation.is_none() || now_ms.saturating_sub(saved.asked_ms) >= poll_ms {
        let etag = saved.generation.map(|g| format!("\"{g}\""));
        match transport.fetch(etag.as_deref()) {
            Ok(None) => {}
            Ok(Some(body)) => match serde_json::from_slice::<Answer>(&body) {
                Ok(a) => {
                    saved.generation = Some(a.generation);
                    saved.sets = a.sets;
                }
                Err(e) => error = Some(format!("not a key set answer: {e}")),
            },
            Err(e) => error = Some(e),
        }
        saved.asked_ms = now_ms;
        let written = serde_json::to_vec(&saved).map_err(|e| e.to_string()).and_then(|b| store.set(RECORD, &b));
        if let Err(e) = written {
            error.get_or_insert(e);
        }
    }
    let sets = saved.generation.map(|_| saved.sets.into_iter().map(|(k, v)| (k, v.to_string().into_bytes())).collect());
    (sets, error)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::revocations::memory::Map;

    struct Sidecar {
        generation: u64,
        asked: Vec<Option<String>>,
        down: bool,
    }

    impl KeysTransport for Sidecar {
        fn fetch(&mut self, if_none_match: Option<&str>) -> Result<Option<Vec<u8>>, String> {
            self.asked.push(if_none_match.map(str::to_owned));
            if self.down {
                return Err("refused".into());
            }
            if if_none_match == Some(format!("\"{}\"", self.generation).as_str()) {
                return Ok(None);
            }
            let set = serde_json::json!({ "keys": [{ "kid": format!("k{}", self.generation) }] });
            Ok(Some(
                serde_json::json!({ "generation": self.generation, "sets": { "https://idp/jwks": set } })
                    .to_string()
                    .into_bytes(),
            ))
        }
    }

    fn kid(sets: &Option<Sets>) -> String {
        let set: serde_json::Value = serde_json::from_slice(&sets.as_ref().unwrap()["https://idp/jwks"]).unwrap();
        set["keys"][0]["kid"].as_str().unwrap().to_owned()
    }

    #[test]
    fn the_sidecar_is_asked_once_per_poll_and_a_failure_keeps_the_stored_sets() {
        let store = Map::default();
        let poll = Duration::from_millis(1000);
        let mut sidecar = Sidecar { generation: 1, asked: Vec::new(), down: false };
        let at = |ms: u64| Duration::from_millis(1_000_000 + ms);
        let (sets, e) = current(&store, poll, at(0), &mut sidecar);
        assert_eq!((kid(&sets), e), ("k1".to_owned(), None));
        // Within the poll period: the store answers, the sidecar is not asked.
        let (sets, _) = current(&store, poll, at(500), &mut sidecar);
        assert_eq!((kid(&sets), sidecar.asked.len()), ("k1".to_owned(), 1));
        // Past it: asked with the generation; unchanged is a 304.
        current(&store, poll, at(1000), &mut sidecar);
        assert_eq!(sidecar.asked.last().unwrap().as_deref(), Some("\"1\""));
        sidecar.generation = 2;
        let (sets, _) = current(&store, poll, at(2000), &mut sidecar);
        assert_eq!(kid(&sets), "k2");
        // The sidecar fails: the stored sets stay, and the next ask waits a poll period.
        sidecar.down = true;
        let (sets, e) = current(&store, poll, at(3000), &mut sidecar);
        assert_eq!((kid(&sets), e.as_deref()), ("k2".to_owned(), Some("refused")));
        let asked = sidecar.asked.len();
        current(&store, poll, at(3500), &mut sidecar);
        assert_eq!(sidecar.asked.len(), asked);
    }

    #[test]
    fn nothing_is_known_before_the_sidecar_answers_once() {
        let store = Map::default();
        let mut sidecar = Sidecar { generation: 1, asked: Vec::new(), down: true };
        let (sets, e) = current(&store, Duration::from_secs(1), Duration::from_secs(10), &mut sidecar);
        assert!(sets.is_none() && e.is_some());
        // Not answered yet: every request asks (no poll wait before the first answer).
        current(&store, Duration::from_secs(1), Duration::from_secs(10), &mut sidecar);
        assert_eq!(sidecar.asked.len(), 2);
    }
}
