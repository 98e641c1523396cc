//! Base64url exactly as RFC 7515 §2 defines it for JWS: URL-safe alphabet, no padding, and
//! canonical trailing bits. Anything else (`=`, `+`, `/`, whitespace, non-zero spare bits) is
//! rejected, so one token has exactly one encoding.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// The strict base64url engine used for every token segment and JWK member.
pub const URL_SAFE_STRICT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// Decodes a token segment, `None` if it is not canonical unpadded base64url.
pub fn decode(segment: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    URL_SAFE_STRICT.decode(segment).ok()
}

/// Decodes into a fixed buffer (signatures), returning the used prefix.
pub fn decode_into<'b>(segment: &str, buf: &'b mut [u8]) -> Option<&'b [u8]> {
    use base64::Engine as _;
    let n = URL_SAFE_STRICT.decode_slice(segment, buf).ok()?;
    buf.get(..n)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn canonical_unpadded_base64url_decodes() {
        assert_eq!(decode("aGk").as_deref(), Some(&b"hi"[..]));
        assert_eq!(decode("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(decode("").as_deref(), Some(&b""[..]));
    }

    #[test]
    fn padding_standard_alphabet_whitespace_and_spare_bits_are_rejected() {
        for bad in ["aGk=", "+/8", "aG k", "aGl", "a", "aGk\n", "aGk%"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn decode_into_refuses_oversized_input() {
        let mut buf = [0u8; 2];
        assert!(decode_into("aGk", &mut buf).is_some());
        assert!(decode_into("aGlp", &mut buf).is_none());
    }
}
