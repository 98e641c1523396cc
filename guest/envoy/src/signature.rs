//! The core's signature capability answered by Envoy: the `verify_signature` foreign function
//! (BoringSSL's `EVP_DigestVerify`), instead of RustCrypto running inside the VM.
//!
//! What Envoy 1.40 verifies this way: RSA PKCS#1 v1.5 (RS256/384/512) and ECDSA (ES256/384,
//! with the signature DER-encoded). RSA-PSS needs a padding parameter the function does not
//! take, so PS256/384/512 stay with the core's own code, as does everything when the function
//! is missing or refuses the key.

use portcullis_core::{Alg, PublicKeyRef, SignatureCheck};
use rsa::pkcs8::EncodePublicKey as _;

/// The foreign function's name in Envoy.
pub const FUNCTION: &str = "verify_signature";

/// The hash Envoy is asked for, when it can verify `alg`.
pub fn hash_function(alg: Alg) -> Option<&'static str> {
    match alg {
        Alg::RS256 | Alg::ES256 => Some("sha256"),
        Alg::RS384 | Alg::ES384 => Some("sha384"),
        Alg::RS512 => Some("sha512"),
        _ => None,
    }
}

/// A public key as SubjectPublicKeyInfo DER, the form the function parses
/// (`EVP_parse_public_key`). `None` for a key the encoders refuse.
pub fn spki_der(key: PublicKeyRef<'_>) -> Option<Vec<u8>> {
    let der = match key {
        PublicKeyRef::Rsa { n, e } => {
            let key = rsa::RsaPublicKey::new(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from_bytes_be(e)).ok()?;
            key.to_public_key_der().ok()?
        }
        PublicKeyRef::Ec { point } if point.len() == 65 => {
            p256::PublicKey::from_sec1_bytes(point).ok()?.to_public_key_der().ok()?
        }
        PublicKeyRef::Ec { point } if point.len() == 97 => {
            p384::PublicKey::from_sec1_bytes(point).ok()?.to_public_key_der().ok()?
        }
        PublicKeyRef::Ec { .. } => return None,
    };
    Some(der.as_bytes().to_vec())
}

/// The signature as the function expects it: RSA as is; ECDSA's fixed-size `r || s` (JWS)
/// as an ASN.1 DER `ECDSA-Sig-Value`. `None` for a malformed ECDSA signature (the core then
/// verifies, and rejects it).
pub fn signature_der(alg: Alg, signature: &[u8]) -> Option<Vec<u8>> {
    match alg {
        Alg::ES256 => Some(p256::ecdsa::Signature::from_slice(signature).ok()?.to_der().as_bytes().to_vec()),
        Alg::ES384 => Some(p384::ecdsa::Signature::from_slice(signature).ok()?.to_der().as_bytes().to_vec()),
        _ => Some(signature.to_vec()),
    }
}

/// The function's argument, `VerifySignatureArguments` in protobuf wire format. Written here
/// rather than through a protobuf crate: four length-delimited fields are a dozen lines, and
/// a code generator would add a build step and more code to the filter than it saves.
pub fn arguments(check: &SignatureCheck<'_>, spki: &[u8]) -> Option<Vec<u8>> {
    let hash = hash_function(check.alg)?;
    let signature = signature_der(check.alg, check.signature)?;
    let mut out = Vec::with_capacity(spki.len() + signature.len() + check.message.len() + 32);
    field(&mut out, 1, hash.as_bytes());
    field(&mut out, 2, spki);
    field(&mut out, 3, &signature);
    field(&mut out, 4, check.message);
    Some(out)
}

fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
    varint(out, u64::from(number) << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[allow(clippy::cast_possible_truncation, reason = "each byte is masked to seven bits first")]
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.push((v & 0x7f) as u8);
}

/// Reads `VerifySignatureResult { bool result = 1; string error = 2; }`: `Some(valid)`, or
/// `None` when the bytes are not that message (the core then verifies itself).
pub fn result(bytes: &[u8]) -> Option<bool> {
    let mut valid = false;
    let mut rest = bytes;
    while let Some((&key, tail)) = rest.split_first() {
        rest = tail;
        match (key >> 3, key & 7) {
            (1, 0) => {
                let (v, tail) = read_varint(rest)?;
                valid = v != 0;
                rest = tail;
            }
            (_, 2) => {
                let (len, tail) = read_varint(rest)?;
                rest = tail.get(usize::try_from(len).ok()?..)?;
            }
            (_, 0) => rest = read_varint(rest)?.1,
            _ => return None,
        }
    }
    Some(valid)
}

fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, bytes.get(i + 1..)?));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn arguments_are_the_protobuf_envoy_parses() {
        let check =
            SignatureCheck { alg: Alg::RS256, key: PublicKeyRef::Ec { point: &[] }, message: b"m", signature: b"sig" };
        let a = arguments(&check, b"KEY").unwrap();
        assert_eq!(a, b"\x0a\x06sha256\x12\x03KEY\x1a\x03sig\x22\x01m");
        let ps = SignatureCheck { alg: Alg::PS256, ..check };
        assert_eq!(arguments(&ps, b"KEY"), None, "PSS stays with the core");
        let long = vec![7u8; 300];
        let mut out = Vec::new();
        field(&mut out, 4, &long);
        assert_eq!(&out[..3], b"\x22\xac\x02", "a two-byte length");
    }

    #[test]
    fn results_are_read_and_anything_else_is_not_trusted() {
        assert_eq!(result(b"\x08\x01"), Some(true));
        assert_eq!(result(b"\x08\x00\x12\x03bad"), Some(false));
        assert_eq!(result(b""), Some(false), "proto3 omits a false result");
        assert_eq!(result(b"\x12\x05ab"), None, "truncated");
        assert_eq!(result(b"\x0d\x00\x00\x00\x00"), None, "a wire type the message never has");
    }

    #[test]
    fn keys_and_ecdsa_signatures_become_der() {
        use p256::ecdsa::signature::Signer as _;
        let sk = p256::ecdsa::SigningKey::from_slice(&[1u8; 32]).unwrap();
        let point = sk.verifying_key().to_encoded_point(false);
        let spki = spki_der(PublicKeyRef::Ec { point: point.as_bytes() }).unwrap();
        assert_eq!(&spki[..2], b"\x30\x59", "a P-256 SubjectPublicKeyInfo is 91 bytes");
        let sig: p256::ecdsa::Signature = sk.sign(b"m");
        let der = signature_der(Alg::ES256, &sig.to_bytes()).unwrap();
        assert_eq!(p256::ecdsa::Signature::from_der(&der).unwrap(), sig);
        assert_eq!(signature_der(Alg::ES256, &[0u8; 10]), None);
        assert_eq!(spki_der(PublicKeyRef::Ec { point: &[4u8; 10] }), None);
        let n = [0xc5u8; 256];
        let spki = spki_der(PublicKeyRef::Rsa { n: &n, e: &[1, 0, 1] }).unwrap();
        assert_eq!(&spki[..4], b"\x30\x82\x01\x22", "an RSA-2048 SubjectPublicKeyInfo is 294 bytes");
    }
}
