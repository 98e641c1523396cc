//! JWS algorithms and trusted verification keys, loaded from RFC 7517 JWKS documents.
//!
//! Keys are parsed and checked once, when the policy loads: RSA moduli under 2048 bits, HMAC
//! secrets shorter than their hash, curve points off the curve, private key material in a JWKS,
//! duplicate `kid`s and keys whose `alg` contradicts their type are load errors. HMAC keys keep a
//! keyed state per allowed hash so a verification clones it instead of re-deriving the pads.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rsa::traits::PublicKeyParts;
use sha2::{Sha256, Sha384, Sha512};

use crate::b64;
use crate::types::{Kid, ValueError};

/// A JWS algorithm Portcullis verifies. Names are matched case-sensitively (RFC 7515 §4.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(clippy::upper_case_acronyms)]
pub enum Alg {
    /// HMAC with SHA-256.
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256 (salt = 32 bytes).
    PS256,
    /// RSASSA-PSS with SHA-384 (salt = 48 bytes).
    PS384,
    /// RSASSA-PSS with SHA-512 (salt = 64 bytes).
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519 (RFC 8037 `EdDSA` with `crv: Ed25519`).
    EdDSA,
}

impl Alg {
    /// Every supported algorithm.
    pub const ALL: [Alg; 12] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// The registered name.
    pub const fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    /// Case-sensitive lookup; `none`, `hs256` and unknown names are `None`.
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// True for the HMAC family.
    pub const fn is_hmac(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }

    const fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// Minimum HMAC secret length (RFC 7518 §3.2: at least the hash size).
    const fn min_hmac_secret(self) -> usize {
        match self {
            Alg::HS384 => 48,
            Alg::HS512 => 64,
            _ => 32,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Alg {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Alg::from_name(s).ok_or_else(|| ValueError::Algorithm(s.to_owned()))
    }
}

/// A set of algorithms.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AlgSet(u16);

impl AlgSet {
    /// The empty set.
    pub const EMPTY: AlgSet = AlgSet(0);

    /// True when `alg` is in the set.
    pub const fn contains(self, alg: Alg) -> bool {
        self.0 & alg.bit() != 0
    }

    /// Adds `alg`.
    pub fn insert(&mut self, alg: Alg) {
        self.0 |= alg.bit();
    }

    /// The intersection.
    #[must_use]
    pub const fn and(self, other: AlgSet) -> AlgSet {
        AlgSet(self.0 & other.0)
    }

    /// True when empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Members in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Alg> {
        Alg::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

impl FromIterator<Alg> for AlgSet {
    fn from_iter<I: IntoIterator<Item = Alg>>(iter: I) -> Self {
        let mut s = AlgSet::EMPTY;
        for a in iter {
            s.insert(a);
        }
        s
    }
}

impl fmt::Debug for AlgSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// Keyed HMAC states, one per hash the key may be used with.
struct HmacStates {
    hs256: Option<Hmac<Sha256>>,
    hs384: Option<Hmac<Sha384>>,
    hs512: Option<Hmac<Sha512>>,
}

/// Verification material for one key. Secrets never appear in `Debug` output.
enum Material {
    Hmac(Box<HmacStates>),
    Rsa(Box<RsaKey>),
    P256(Box<EcKey<p256::ecdsa::VerifyingKey>>),
    P384(Box<EcKey<p384::ecdsa::VerifyingKey>>),
    Ed25519(Box<ed25519_dalek::VerifyingKey>),
}

/// An RSA key: parsed for the portable backend, and as its big-endian modulus and exponent
/// (no leading zeros) for the native one.
struct RsaKey {
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    key: rsa::RsaPublicKey,
    n: Vec<u8>,
    e: Vec<u8>,
}

/// An EC key: parsed for the portable backend, and as its uncompressed SEC1 point for the
/// native one.
struct EcKey<K> {
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    key: K,
    point: Vec<u8>,
}

/// A public key as the core holds it, for a host asked to verify a signature with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicKeyRef<'a> {
    /// RSA: big-endian modulus and public exponent, without leading zeros.
    Rsa {
        /// Modulus.
        n: &'a [u8],
        /// Exponent.
        e: &'a [u8],
    },
    /// ECDSA (P-256, P-384): the uncompressed SEC1 point, `0x04 || x || y`.
    Ec {
        /// The point.
        point: &'a [u8],
    },
}

/// One signature a host may verify for the core (see
/// [`Revocations::verify_signature`](crate::Revocations::verify_signature)).
#[derive(Clone, Copy, Debug)]
pub struct SignatureCheck<'a> {
    /// RS256/384/512, PS256/384/512, ES256 or ES384 (RFC 7518 rules: PSS salt of the hash
    /// length, fixed-size `r || s` ECDSA signatures).
    pub alg: Alg,
    /// The key the core chose.
    pub key: PublicKeyRef<'a>,
    /// The signed bytes (a JWT's signing input).
    pub message: &'a [u8],
    /// The signature, decoded.
    pub signature: &'a [u8],
}

/// A host's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureVerdict {
    /// The signature is valid for that key, algorithm and message.
    Valid,
    /// It is not.
    Invalid,
    /// The host cannot tell (no such capability, or not for this algorithm): the core verifies.
    Unsupported,
}

impl Material {
    fn kind(&self) -> &'static str {
        match self {
            Material::Hmac(_) => "oct",
            Material::Rsa(_) => "RSA",
            Material::P256(_) => "EC P-256",
            Material::P384(_) => "EC P-384",
            Material::Ed25519(_) => "OKP Ed25519",
        }
    }
}

/// A key trusted to verify tokens for one issuer, with the algorithms it may be used with.
pub struct TrustedKey {
    kid: Option<Kid>,
    algs: AlgSet,
    material: Material,
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedKey")
            .field("kid", &self.kid)
            .field("kty", &self.material.kind())
            .field("algs", &self.algs)
            .finish_non_exhaustive()
    }
}

impl TrustedKey {
    /// The key's `kid`, if it has one.
    pub fn kid(&self) -> Option<&Kid> {
        self.kid.as_ref()
    }

    /// Algorithms this key may verify.
    pub fn algs(&self) -> AlgSet {
        self.algs
    }

    /// Verifies `sig` over `message` with `alg`, asking `host` first for asymmetric keys (see
    /// [`Revocations::verify_signature`](crate::Revocations::verify_signature)); the core's own
    /// code answers when the host cannot. False when the key does not support `alg`.
    pub fn verify_with(&self, host: &dyn crate::Revocations, alg: Alg, message: &[u8], sig: &[u8]) -> bool {
        if !self.algs.contains(alg) {
            return false;
        }
        let key = match (&self.material, alg) {
            (Material::Rsa(k), _) => Some(PublicKeyRef::Rsa { n: &k.n, e: &k.e }),
            (Material::P256(k), Alg::ES256) => Some(PublicKeyRef::Ec { point: &k.point }),
            (Material::P384(k), Alg::ES384) => Some(PublicKeyRef::Ec { point: &k.point }),
            _ => None,
        };
        if let Some(key) = key {
            let check = SignatureCheck { alg, key, message, signature: sig };
            return match host.verify_signature(&check) {
                SignatureVerdict::Valid => true,
                SignatureVerdict::Invalid => false,
                SignatureVerdict::Unsupported => {
                    let valid = self.verify(alg, message, sig);
                    host.signature_checked(&check, valid);
                    valid
                }
            };
        }
        self.verify(alg, message, sig)
    }

    /// Verifies `sig` over `message` with `alg` with the core's own code. False when the key
    /// does not support `alg`.
    pub fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> bool {
        if !self.algs.contains(alg) {
            return false;
        }
        match (&self.material, alg) {
            (Material::Hmac(h), Alg::HS256) => h.hs256.as_ref().is_some_and(|k| mac_verify(k, message, sig)),
            (Material::Hmac(h), Alg::HS384) => h.hs384.as_ref().is_some_and(|k| mac_verify(k, message, sig)),
            (Material::Hmac(h), Alg::HS512) => h.hs512.as_ref().is_some_and(|k| mac_verify(k, message, sig)),
            (Material::Rsa(k), _) => backend::rsa(k, alg, message, sig),
            (Material::P256(k), Alg::ES256) => backend::p256(k, message, sig),
            (Material::P384(k), Alg::ES384) => backend::p384(k, message, sig),
            (Material::Ed25519(k), Alg::EdDSA) => <[u8; 64]>::try_from(sig)
                .is_ok_and(|s| k.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&s)).is_ok()),
            _ => false,
        }
    }
}

/// Constant-time MAC check (`verify_slice` compares with `subtle`).
fn mac_verify<M: Mac + Clone>(keyed: &M, message: &[u8], sig: &[u8]) -> bool {
    let mut mac = keyed.clone();
    mac.update(message);
    mac.verify_slice(sig).is_ok()
}

/// Asymmetric signatures, two ways. The portable backend (RustCrypto) runs everywhere and is
/// what the wasm guests use. On native targets the same checks go through `ring` (assembly,
/// about 7x faster for RSA-2048 and 3.6x for P-256 on this project's machine), chosen over
/// aws-lc-rs for its small pure-Rust-and-assembly build: no CMake, no C library to vendor.
/// Ed25519 stays on ed25519-dalek everywhere: `verify_strict`'s rules (no small-order `R`)
/// are not ring's, and it is as fast. Both backends enforce the same RFC 7518 rules (PSS salt
/// length equal to the hash length, fixed-size ECDSA signatures), and tests hold them equal
/// (natively, where both are compiled).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod portable {
    use super::{Alg, EcKey, RsaKey};
    use sha2::{Digest as _, Sha256, Sha384, Sha512};

    pub(super) fn rsa(k: &RsaKey, alg: Alg, message: &[u8], sig: &[u8]) -> bool {
        use rsa::{Pkcs1v15Sign, Pss};
        let key = &k.key;
        let r = match alg {
            Alg::RS256 => key.verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(message), sig),
            Alg::RS384 => key.verify(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(message), sig),
            Alg::RS512 => key.verify(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(message), sig),
            // `Pss::new` takes the hash length as the salt length, as RFC 7518 requires.
            Alg::PS256 => key.verify(Pss::new::<Sha256>(), &Sha256::digest(message), sig),
            Alg::PS384 => key.verify(Pss::new::<Sha384>(), &Sha384::digest(message), sig),
            Alg::PS512 => key.verify(Pss::new::<Sha512>(), &Sha512::digest(message), sig),
            _ => return false,
        };
        r.is_ok()
    }

    pub(super) fn p256(k: &EcKey<p256::ecdsa::VerifyingKey>, message: &[u8], sig: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier;
        p256::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.key.verify(message, &s).is_ok())
    }

    pub(super) fn p384(k: &EcKey<p384::ecdsa::VerifyingKey>, message: &[u8], sig: &[u8]) -> bool {
        use p384::ecdsa::signature::Verifier;
        p384::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.key.verify(message, &s).is_ok())
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::{Alg, EcKey, PublicKeyRef, RsaKey};
    use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};

    /// Verifies with raw key parts; `None` when `alg` does not fit the key.
    pub(super) fn verify(alg: Alg, key: PublicKeyRef<'_>, message: &[u8], signature: &[u8]) -> Option<bool> {
        Some(match (key, alg) {
            (PublicKeyRef::Rsa { n, e }, _) => {
                let params = match alg {
                    Alg::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                    Alg::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                    Alg::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                    Alg::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
                    Alg::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
                    Alg::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
                    _ => return None,
                };
                RsaPublicKeyComponents { n, e }.verify(params, message, signature).is_ok()
            }
            (PublicKeyRef::Ec { point }, Alg::ES256) => {
                UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, point).verify(message, signature).is_ok()
            }
            (PublicKeyRef::Ec { point }, Alg::ES384) => {
                UnparsedPublicKey::new(&sig::ECDSA_P384_SHA384_FIXED, point).verify(message, signature).is_ok()
            }
            _ => return None,
        })
    }

    pub(super) fn rsa(k: &RsaKey, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        verify(alg, PublicKeyRef::Rsa { n: &k.n, e: &k.e }, message, signature).unwrap_or(false)
    }

    pub(super) fn p256(k: &EcKey<p256::ecdsa::VerifyingKey>, message: &[u8], signature: &[u8]) -> bool {
        verify(Alg::ES256, PublicKeyRef::Ec { point: &k.point }, message, signature).unwrap_or(false)
    }

    pub(super) fn p384(k: &EcKey<p384::ecdsa::VerifyingKey>, message: &[u8], signature: &[u8]) -> bool {
        verify(Alg::ES384, PublicKeyRef::Ec { point: &k.point }, message, signature).unwrap_or(false)
    }
}

/// Verifies a signature check natively (ring), as a host answering a wasm guest does;
/// [`SignatureVerdict::Unsupported`] for an algorithm that does not fit the key. A key the
/// core would not have loaded (an RSA modulus under 2048 bits) is [`SignatureVerdict::Invalid`].
#[cfg(not(target_arch = "wasm32"))]
pub fn verify_natively(check: &SignatureCheck<'_>) -> SignatureVerdict {
    match native::verify(check.alg, check.key, check.message, check.signature) {
        Some(true) => SignatureVerdict::Valid,
        Some(false) => SignatureVerdict::Invalid,
        None => SignatureVerdict::Unsupported,
    }
}

#[cfg(not(target_arch = "wasm32"))]
use native as backend;
#[cfg(target_arch = "wasm32")]
use portable as backend;

/// Keys trusted for one issuer, indexed by `kid`.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<TrustedKey>,
    by_kid: crate::FastMap<Kid, usize>,
    /// Keys present in the document but not trusted, and why (for `policy lint`).
    skipped: Vec<(usize, Skipped)>,
}

/// Why a JWKS, a JWK or a secret was refused. Never carries key material: only member names,
/// sizes, and the non-secret values `kty`, `crv`, `alg` and `kid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The document is not JSON.
    #[error("not a JSON document: {0}")]
    NotJson(String),
    /// No `keys` array.
    #[error("a JWKS is an object with a `keys` array")]
    NotJwks,
    /// One key of a set is malformed.
    #[error("keys[{index}]: {error}")]
    At {
        /// Position in `keys`.
        index: usize,
        /// What is wrong with it.
        error: Box<KeyError>,
    },
    /// Two keys share a `kid`.
    #[error("duplicate kid `{0}`")]
    DuplicateKid(Kid),
    /// A key is not an object.
    #[error("a JWK is a JSON object")]
    NotObject,
    /// A member that must be a string is not.
    #[error("`{0}` must be a string")]
    NotString(&'static str),
    /// A required member is missing.
    #[error("`{0}` is required")]
    Missing(&'static str),
    /// A member is not unpadded base64url.
    #[error("`{0}` is not unpadded base64url")]
    NotBase64(&'static str),
    /// `key_ops` is not an array.
    #[error("`key_ops` must be an array")]
    KeyOpsNotArray,
    /// The `kid` is not a valid key id.
    #[error("kid: {0}")]
    Kid(ValueError),
    /// The `alg` is not one this build supports.
    #[error(transparent)]
    Alg(ValueError),
    /// A public key carries a private member.
    #[error("contains private key member `{0}`; publish only the public key")]
    PrivateMember(&'static str),
    /// An HMAC secret is shorter than its algorithm needs.
    #[error("secret is {len} bytes; {needs} needs at least {min}")]
    ShortSecret {
        /// Its length.
        len: usize,
        /// The algorithm, or `HMAC` in general.
        needs: &'static str,
        /// The least it needs.
        min: usize,
    },
    /// The RSA parameters do not form a key.
    #[error("invalid RSA key: {0}")]
    Rsa(String),
    /// The RSA modulus is too small.
    #[error("RSA modulus is {0} bits; at least 2048 are required")]
    SmallModulus(usize),
    /// EC coordinates of the wrong length.
    #[error("`x` and `y` must each be {0} bytes")]
    CoordinateLength(usize),
    /// The point is not on its curve (or not a valid Ed25519 point).
    #[error("the point is not on {0}")]
    NotOnCurve(&'static str),
    /// An Ed25519 key of small order.
    #[error("`x` is a small-order Ed25519 point")]
    SmallOrder,
    /// A curve this build does not verify.
    #[error("unsupported {kty} curve `{crv}` (supported: {supported})")]
    Curve {
        /// `EC` or `OKP`.
        kty: &'static str,
        /// The curve named.
        crv: String,
        /// What is supported.
        supported: &'static str,
    },
    /// A key type this build does not verify.
    #[error("unsupported kty `{0}` (supported: oct, RSA, EC, OKP)")]
    Kty(String),
    /// The declared `alg` is for another kind of key.
    #[error("alg {alg} does not fit a {kind} key")]
    AlgMismatch {
        /// The declared algorithm.
        alg: Alg,
        /// The key's kind.
        kind: &'static str,
    },
}

/// Why a well-formed key is not trusted: identity providers publish such keys beside the ones
/// an issuer signs with, so they are skipped (and reported by `policy lint`), not refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    /// `use` is not `sig`.
    #[error("`use` is `{0}`, not `sig`")]
    NotForSignatures(String),
    /// `key_ops` lacks `verify`.
    #[error("`key_ops` does not include `verify`")]
    NotForVerifying,
    /// Usable with none of the issuer's algorithms.
    #[error("{0} key fits none of the issuer's algorithms")]
    NoAlgorithm(String),
    /// A key from the network that this build cannot use (an identity provider's key set is
    /// not ours to refuse whole for one key we do not support).
    #[error("unusable: {0}")]
    Unusable(KeyError),
    /// A secret (`oct`) key in a key set from the network, where only public keys belong.
    #[error("an `oct` (secret) key in a key set from the network")]
    SecretFromNetwork,
    /// Its `kid` is already trusted from another of the issuer's sources.
    #[error("kid `{0}` is already trusted from another source")]
    KidTaken(Kid),
}

/// What a key lookup found.
#[derive(Debug)]
pub enum KeyChoice<'a> {
    /// Exactly this key.
    One(&'a TrustedKey),
    /// Try each of these HMAC keys (no `kid`, HMAC algorithm).
    AnyOf(Vec<&'a TrustedKey>),
    /// `kid` names a key that does not support the algorithm.
    WrongAlg,
    /// No usable key.
    Unknown,
}

impl KeySet {
    /// All keys.
    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    /// Keys in the document that are not trusted, with the reason (not for signatures, or
    /// usable with none of the issuer's algorithms).
    pub fn skipped(&self) -> &[(usize, Skipped)] {
        &self.skipped
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Adds `other`'s keys to this set. A key whose `kid` is already trusted is left out, and
    /// returned; the first source of a `kid` keeps it.
    pub(crate) fn absorb(&mut self, other: KeySet) -> Vec<Kid> {
        let mut taken = Vec::new();
        for key in other.keys {
            if let Some(kid) = &key.kid {
                if self.by_kid.contains_key(kid) {
                    taken.push(kid.clone());
                    continue;
                }
                self.by_kid.insert(kid.clone(), self.keys.len());
            }
            self.keys.push(key);
        }
        taken
    }

    /// Selects the key(s) for a token, following the `kid` rules in `docs/policy.md`.
    pub fn choose(&self, alg: Alg, kid: Option<&str>) -> KeyChoice<'_> {
        if let Some(kid) = kid {
            return match self.by_kid.get(kid).and_then(|&i| self.keys.get(i)) {
                Some(k) if k.algs.contains(alg) => KeyChoice::One(k),
                Some(_) => KeyChoice::WrongAlg,
                None => KeyChoice::Unknown,
            };
        }
        let mut fitting = self.keys.iter().filter(|k| k.algs.contains(alg));
        if alg.is_hmac() {
            let all: Vec<_> = fitting.collect();
            if all.is_empty() { KeyChoice::Unknown } else { KeyChoice::AnyOf(all) }
        } else {
            match (fitting.next(), fitting.next()) {
                (Some(k), None) => KeyChoice::One(k),
                _ => KeyChoice::Unknown,
            }
        }
    }

    /// Parses a JWKS document. `allowed` is the issuer's algorithm allow-list: each key is limited
    /// to the algorithms it supports within that list, and a key left with none is an error
    /// (it could never verify anything, which is almost always a configuration mistake).
    pub fn from_jwks(bytes: &[u8], allowed: AlgSet) -> Result<KeySet, KeyError> {
        KeySet::parse(bytes, allowed, false)
    }

    /// Parses a JWKS fetched from an identity provider. Only the document's shape can refuse it
    /// (not JSON, no `keys` array, two keys with one `kid`); a key this build cannot use (a curve
    /// it lacks, a short RSA modulus) or a secret `oct` key is skipped with its reason, because
    /// providers publish keys for every client beside the ones this issuer signs with.
    pub fn from_remote_jwks(bytes: &[u8], allowed: AlgSet) -> Result<KeySet, KeyError> {
        KeySet::parse(bytes, allowed, true)
    }

    fn parse(bytes: &[u8], allowed: AlgSet, remote: bool) -> Result<KeySet, KeyError> {
        let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| KeyError::NotJson(e.to_string()))?;
        let keys = doc.get("keys").and_then(serde_json::Value::as_array).ok_or(KeyError::NotJwks)?;
        let mut set = KeySet::default();
        for (i, jwk) in keys.iter().enumerate() {
            let at = |error| KeyError::At { index: i, error: Box::new(error) };
            let parsed = if remote && jwk.get("kty").and_then(serde_json::Value::as_str) == Some("oct") {
                Ok(Err(Skipped::SecretFromNetwork))
            } else {
                parse_jwk(jwk, allowed)
            };
            let key = match parsed {
                Ok(Ok(key)) => key,
                Ok(Err(why)) => {
                    set.skipped.push((i, why));
                    continue;
                }
                Err(error) if remote => {
                    set.skipped.push((i, Skipped::Unusable(error)));
                    continue;
                }
                Err(error) => return Err(at(error)),
            };
            if let Some(kid) = &key.kid
                && set.by_kid.insert(kid.clone(), set.keys.len()).is_some()
            {
                return Err(at(KeyError::DuplicateKid(kid.clone())));
            }
            set.keys.push(key);
        }
        Ok(set)
    }
}

/// Checks a key set fetched from the network as a policy would read it ([`KeySet::from_remote_jwks`]
/// with every algorithm allowed): the number of keys it would trust, or why the document is
/// refused. For a runtime deciding whether to keep a fetched set or the last good one.
pub fn check_remote_jwks(bytes: &[u8]) -> Result<usize, KeyError> {
    KeySet::from_remote_jwks(bytes, Alg::ALL.into_iter().collect()).map(|set| set.len())
}

fn field<'a>(jwk: &'a serde_json::Value, name: &'static str) -> Result<Option<&'a str>, KeyError> {
    match jwk.get(name) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(KeyError::NotString(name)),
    }
}

fn required<'a>(jwk: &'a serde_json::Value, name: &'static str) -> Result<&'a str, KeyError> {
    field(jwk, name)?.ok_or(KeyError::Missing(name))
}

fn bytes_of(jwk: &serde_json::Value, name: &'static str) -> Result<Vec<u8>, KeyError> {
    b64::URL_SAFE_STRICT.decode(required(jwk, name)?).map_err(|_| KeyError::NotBase64(name))
}

/// Parses one JWK. `Ok(Err(why))` for a well-formed key that is not trusted: not a signature key
/// (`use: enc`, `key_ops` without `verify`) or usable with none of the issuer's algorithms.
/// Identity providers publish such keys beside the ones an issuer uses; they are skipped, not
/// refused. `Err` is a malformed key.
fn parse_jwk(jwk: &serde_json::Value, allowed: AlgSet) -> Result<Result<TrustedKey, Skipped>, KeyError> {
    if !jwk.is_object() {
        return Err(KeyError::NotObject);
    }
    if let Some(u) = field(jwk, "use")?
        && u != "sig"
    {
        return Ok(Err(Skipped::NotForSignatures(u.to_owned())));
    }
    if let Some(ops) = jwk.get("key_ops") {
        let ops = ops.as_array().ok_or(KeyError::KeyOpsNotArray)?;
        if !ops.iter().any(|o| o.as_str() == Some("verify")) {
            return Ok(Err(Skipped::NotForVerifying));
        }
    }
    let kid = field(jwk, "kid")?.map(|k| k.parse::<Kid>().map_err(KeyError::Kid)).transpose()?;
    let kty = required(jwk, "kty")?;
    let declared = field(jwk, "alg")?.map(|a| a.parse::<Alg>().map_err(KeyError::Alg)).transpose()?;
    for private in ["d", "p", "q", "dp", "dq", "qi", "oth"] {
        if kty != "oct" && jwk.get(private).is_some() {
            return Err(KeyError::PrivateMember(private));
        }
    }

    let (family, material): (AlgSet, Material) = match kty {
        "oct" => {
            let secret = bytes_of(jwk, "k")?;
            let fits = |a: Alg| secret.len() >= a.min_hmac_secret();
            if let Some(a) = declared
                && a.is_hmac()
                && !fits(a)
            {
                return Err(KeyError::ShortSecret { len: secret.len(), needs: a.name(), min: a.min_hmac_secret() });
            }
            if !fits(Alg::HS256) {
                return Err(KeyError::ShortSecret { len: secret.len(), needs: "HMAC", min: 32 });
            }
            let family: AlgSet = [Alg::HS256, Alg::HS384, Alg::HS512].into_iter().filter(|a| fits(*a)).collect();
            let want = narrow(family, declared, allowed);
            let material = Material::Hmac(Box::new(HmacStates {
                hs256: keyed(want.contains(Alg::HS256), &secret)?,
                hs384: keyed(want.contains(Alg::HS384), &secret)?,
                hs512: keyed(want.contains(Alg::HS512), &secret)?,
            }));
            (family, material)
        }
        "RSA" => {
            let n = rsa::BigUint::from_bytes_be(&bytes_of(jwk, "n")?);
            let e = rsa::BigUint::from_bytes_be(&bytes_of(jwk, "e")?);
            let key = rsa::RsaPublicKey::new(n, e).map_err(|e| KeyError::Rsa(e.to_string()))?;
            let bits = key.n().bits();
            if bits < 2048 {
                return Err(KeyError::SmallModulus(bits));
            }
            let family = [Alg::RS256, Alg::RS384, Alg::RS512, Alg::PS256, Alg::PS384, Alg::PS512].into_iter().collect();
            let (n, e) = (key.n().to_bytes_be(), key.e().to_bytes_be());
            (family, Material::Rsa(Box::new(RsaKey { key, n, e })))
        }
        "EC" => {
            let crv = required(jwk, "crv")?;
            let (x, y) = (bytes_of(jwk, "x")?, bytes_of(jwk, "y")?);
            match crv {
                "P-256" => {
                    let point = sec1_point(&x, &y, 32)?;
                    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                        .map_err(|_| KeyError::NotOnCurve("P-256"))?;
                    ([Alg::ES256].into_iter().collect(), Material::P256(Box::new(EcKey { key, point })))
                }
                "P-384" => {
                    let point = sec1_point(&x, &y, 48)?;
                    let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                        .map_err(|_| KeyError::NotOnCurve("P-384"))?;
                    ([Alg::ES384].into_iter().collect(), Material::P384(Box::new(EcKey { key, point })))
                }
                other => {
                    return Err(KeyError::Curve { kty: "EC", crv: other.to_owned(), supported: "P-256, P-384" });
                }
            }
        }
        "OKP" => {
            let crv = required(jwk, "crv")?;
            if crv != "Ed25519" {
                return Err(KeyError::Curve { kty: "OKP", crv: crv.to_owned(), supported: "Ed25519" });
            }
            let x: [u8; 32] = bytes_of(jwk, "x")?.try_into().map_err(|_| KeyError::CoordinateLength(32))?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&x).map_err(|_| KeyError::NotOnCurve("Ed25519"))?;
            if key.is_weak() {
                return Err(KeyError::SmallOrder);
            }
            ([Alg::EdDSA].into_iter().collect(), Material::Ed25519(Box::new(key)))
        }
        other => {
            return Err(KeyError::Kty(other.to_owned()));
        }
    };

    if let Some(a) = declared
        && !family.contains(a)
    {
        return Err(KeyError::AlgMismatch { alg: a, kind: material.kind() });
    }
    let algs = narrow(family, declared, allowed);
    if algs.is_empty() {
        let what = declared.map_or_else(|| material.kind().to_string(), |a| a.to_string());
        return Ok(Err(Skipped::NoAlgorithm(what)));
    }
    Ok(Ok(TrustedKey { kid, algs, material }))
}

fn narrow(family: AlgSet, declared: Option<Alg>, allowed: AlgSet) -> AlgSet {
    let mut s = family.and(allowed);
    if let Some(a) = declared {
        s = s.and([a].into_iter().collect());
    }
    s
}

fn keyed<M: Mac + hmac::digest::KeyInit>(wanted: bool, secret: &[u8]) -> Result<Option<M>, KeyError> {
    if !wanted {
        return Ok(None);
    }
    // HMAC takes keys of any length; this cannot fail for the lengths checked above.
    <M as hmac::digest::KeyInit>::new_from_slice(secret).map(Some).map_err(|_| KeyError::ShortSecret {
        len: secret.len(),
        needs: "HMAC",
        min: 32,
    })
}

fn sec1_point(x: &[u8], y: &[u8], len: usize) -> Result<Vec<u8>, KeyError> {
    if x.len() != len || y.len() != len {
        return Err(KeyError::CoordinateLength(len));
    }
    let mut p = Vec::with_capacity(1 + 2 * len);
    p.push(0x04);
    p.extend_from_slice(x);
    p.extend_from_slice(y);
    Ok(p)
}

/// Builds a key set holding one HMAC secret (service tokens use this path too).
pub(crate) fn hmac_sha256(secret: &[u8]) -> Result<Hmac<Sha256>, KeyError> {
    let short = KeyError::ShortSecret { len: secret.len(), needs: "HMAC-SHA256", min: 32 };
    if secret.len() < 32 {
        return Err(short);
    }
    <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(secret).map_err(|_| short)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn all() -> AlgSet {
        Alg::ALL.into_iter().collect()
    }

    fn oct(k: &[u8]) -> serde_json::Value {
        serde_json::json!({"kty":"oct","k": b64::URL_SAFE_STRICT.encode(k)})
    }

    #[test]
    fn alg_names_are_case_sensitive_and_none_is_unknown() {
        assert_eq!(Alg::from_name("HS256"), Some(Alg::HS256));
        assert_eq!(Alg::from_name("EdDSA"), Some(Alg::EdDSA));
        for bad in ["none", "None", "hs256", "HS256 ", "ES512", "RS1", ""] {
            assert_eq!(Alg::from_name(bad), None, "{bad}");
        }
    }

    /// The native and portable backends give the same answer for every corpus token signed
    /// with an RSA or EC demo key, and for each with its signature or message altered.
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn native_and_portable_backends_agree_on_every_corpus_signature() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let jwks = std::fs::read(format!("{root}/policies/keys/jwks.json")).unwrap();
        let keys = KeySet::from_jwks(&jwks, all()).unwrap();
        let corpus = std::fs::read_to_string(format!("{root}/tests/fixtures/corpus.jsonl")).unwrap();
        let (mut checked, mut valid) = (0, 0);
        for token in corpus.split(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c))) {
            let parts: Vec<&str> = token.split('.').collect();
            let [h, p, sg] = parts.as_slice() else { continue };
            let Ok(header) = b64::URL_SAFE_STRICT.decode(h) else { continue };
            let Ok(header) = serde_json::from_slice::<serde_json::Value>(&header) else { continue };
            let (Some(alg), Some(kid)) = (header["alg"].as_str().and_then(Alg::from_name), header["kid"].as_str())
            else {
                continue;
            };
            let Some(key) = keys.keys().iter().find(|k| k.kid().is_some_and(|k| k.as_str() == kid)) else { continue };
            let Ok(signature) = b64::URL_SAFE_STRICT.decode(sg) else { continue };
            let message = format!("{h}.{p}");
            let mut flipped = signature.clone();
            if let Some(b) = flipped.last_mut() {
                *b ^= 1;
            }
            let short = &signature[..signature.len().saturating_sub(1)];
            let cases: [(&[u8], &[u8]); 4] = [
                (message.as_bytes(), &signature),
                (message.as_bytes(), &flipped),
                (message.as_bytes(), short),
                (b"another message", &signature),
            ];
            for (i, (m, sgn)) in cases.into_iter().enumerate() {
                let (native, portable) = match (&key.material, alg) {
                    (Material::Rsa(k), _) => (native::rsa(k, alg, m, sgn), portable::rsa(k, alg, m, sgn)),
                    (Material::P256(k), Alg::ES256) => (native::p256(k, m, sgn), portable::p256(k, m, sgn)),
                    (Material::P384(k), Alg::ES384) => (native::p384(k, m, sgn), portable::p384(k, m, sgn)),
                    _ => break,
                };
                assert_eq!(native, portable, "{kid} {alg:?} case {i}");
                if i > 0 {
                    assert!(!native, "{kid} {alg:?} case {i}: an altered input verified");
                }
                checked += 1;
                valid += usize::from(i == 0 && native);
            }
        }
        assert!(checked >= 40 && valid >= 8, "too few corpus signatures exercised: {checked} checks, {valid} valid");
    }

    #[test]
    fn short_hmac_secrets_are_rejected() {
        let e = parse_jwk(&oct(&[7; 31]), all()).unwrap_err();
        assert_eq!(e, KeyError::ShortSecret { len: 31, needs: "HMAC", min: 32 });
        assert_eq!(e.to_string(), "secret is 31 bytes; HMAC needs at least 32");
    }

    #[test]
    fn hmac_keys_only_serve_hashes_their_length_supports() {
        let k = parse_jwk(&oct(&[7; 40]), all()).unwrap().unwrap();
        assert!(k.algs().contains(Alg::HS256));
        assert!(!k.algs().contains(Alg::HS384));
        let mut declared = oct(&[7; 40]);
        declared["alg"] = "HS512".into();
        assert_eq!(
            parse_jwk(&declared, all()).unwrap_err(),
            KeyError::ShortSecret { len: 40, needs: "HS512", min: 64 }
        );
    }

    #[test]
    fn declared_alg_must_fit_the_key_type() {
        let mut k = oct(&[7; 32]);
        k["alg"] = "RS256".into();
        assert_eq!(parse_jwk(&k, all()).unwrap_err(), KeyError::AlgMismatch { alg: Alg::RS256, kind: "oct" });
    }

    #[test]
    fn keys_outside_the_issuer_allow_list_are_skipped_with_a_reason() {
        let only_rs: AlgSet = [Alg::RS256].into_iter().collect();
        let skipped = parse_jwk(&oct(&[7; 32]), only_rs).unwrap().unwrap_err();
        assert_eq!(skipped.to_string(), "oct key fits none of the issuer's algorithms");
        let doc = serde_json::json!({"keys":[{"kty":"oct","kid":"h","k": b64::URL_SAFE_STRICT.encode([7u8; 32])}]});
        let set = KeySet::from_jwks(doc.to_string().as_bytes(), only_rs).unwrap();
        assert!(set.is_empty());
        assert_eq!(set.skipped(), [(0, skipped)]);
    }

    #[test]
    fn private_members_in_public_key_sets_are_rejected() {
        let k = serde_json::json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"});
        assert_eq!(parse_jwk(&k, all()).unwrap_err(), KeyError::PrivateMember("d"));
    }

    #[test]
    fn encryption_keys_are_skipped_not_trusted() {
        let mut k = oct(&[7; 32]);
        k["use"] = "enc".into();
        assert_eq!(parse_jwk(&k, all()).unwrap().unwrap_err(), Skipped::NotForSignatures("enc".into()));
        let mut k = oct(&[7; 32]);
        k["key_ops"] = serde_json::json!(["encrypt"]);
        assert_eq!(parse_jwk(&k, all()).unwrap().unwrap_err(), Skipped::NotForVerifying);
    }

    #[test]
    fn small_rsa_moduli_are_rejected() {
        // A 1024-bit modulus (all ones is not prime-derived, but size is checked first).
        let n = b64::URL_SAFE_STRICT.encode([0xff_u8; 128]);
        let k = serde_json::json!({"kty":"RSA","n": n, "e":"AQAB"});
        assert_eq!(parse_jwk(&k, all()).unwrap_err(), KeyError::SmallModulus(1024));
    }

    #[test]
    fn ec_points_off_the_curve_are_rejected() {
        let z = b64::URL_SAFE_STRICT.encode([1u8; 32]);
        let k = serde_json::json!({"kty":"EC","crv":"P-256","x": z, "y": z});
        assert_eq!(parse_jwk(&k, all()).unwrap_err(), KeyError::NotOnCurve("P-256"));
    }

    #[test]
    fn padded_or_standard_base64_in_a_jwk_is_rejected() {
        let k = serde_json::json!({"kty":"oct","k": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="});
        assert_eq!(parse_jwk(&k, all()).unwrap_err(), KeyError::NotBase64("k"));
    }

    #[test]
    fn duplicate_kids_are_rejected() {
        let k = b64::URL_SAFE_STRICT.encode([7u8; 32]);
        let doc = serde_json::json!({"keys":[{"kty":"oct","kid":"a","k":k},{"kty":"oct","kid":"a","k":k}]});
        let e = KeySet::from_jwks(doc.to_string().as_bytes(), all()).unwrap_err();
        assert_eq!(e.to_string(), "keys[1]: duplicate kid `a`");
    }

    #[test]
    fn kid_selection_follows_the_rules() {
        let k = b64::URL_SAFE_STRICT.encode([7u8; 32]);
        let doc = serde_json::json!({"keys":[
            {"kty":"oct","kid":"h1","k":k},
            {"kty":"oct","kid":"h2","k":k},
            {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]});
        let set = KeySet::from_jwks(doc.to_string().as_bytes(), all()).unwrap();
        assert!(matches!(set.choose(Alg::HS256, Some("h1")), KeyChoice::One(_)));
        assert!(matches!(set.choose(Alg::HS256, Some("ed")), KeyChoice::WrongAlg));
        assert!(matches!(set.choose(Alg::HS256, Some("zz")), KeyChoice::Unknown));
        assert!(matches!(set.choose(Alg::HS256, None), KeyChoice::AnyOf(v) if v.len() == 2));
        assert!(matches!(set.choose(Alg::EdDSA, None), KeyChoice::One(_)));
        assert!(matches!(set.choose(Alg::ES256, None), KeyChoice::Unknown));
    }
}
