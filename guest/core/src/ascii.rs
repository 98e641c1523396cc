//! Byte-class checks over whole tokens, eight bytes per step.
//!
//! A credential is scanned byte by byte several times on the way in (visible ASCII, header-safe
//! claim values). Natively LLVM vectorises such loops; in the wasm guest each byte is a loop
//! iteration with its own checks, and these scans were ~10% of a warm HS256 decision there. The
//! SWAR form below (Hacker's Delight / "Bit Twiddling Hacks": `hasless`, `hasmore`) tests eight
//! bytes with a handful of `u64` operations on every target. No crate offers a range test over
//! bytes (`memchr` finds single bytes), hence this module.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// True when every byte is in `LO..=HI`. Requires `1 <= LO <= 0x80` and `HI <= 0x7E`, the range
/// where both word tests are exact (they may misplace which byte matched, never whether one did).
fn all_within<const LO: u8, const HI: u8>(bytes: &[u8]) -> bool {
    const { assert!(LO >= 1 && LO <= 0x80 && HI <= 0x7e && LO <= HI) };
    let below = ONES * LO as u64;
    let above = ONES * (0x7f - HI) as u64;
    let (words, rest) = bytes.as_chunks::<8>();
    let mut out = 0u64;
    for w in words {
        let x = u64::from_le_bytes(*w);
        // A byte below LO, then a byte above HI (or with its high bit set).
        out |= x.wrapping_sub(below) & !x & HIGHS;
        out |= (x.wrapping_add(above) | x) & HIGHS;
    }
    out == 0 && rest.iter().all(|b| (LO..=HI).contains(b))
}

/// Visible ASCII (`0x21..=0x7e`): what a bearer token, API key or service token is made of.
pub(crate) fn all_graphic(bytes: &[u8]) -> bool {
    all_within::<0x21, 0x7e>(bytes)
}

/// Printable ASCII including space (`0x20..=0x7e`): no control character, nothing to decode.
pub(crate) fn all_printable(bytes: &[u8]) -> bool {
    all_within::<0x20, 0x7e>(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn every_byte_value_at_every_offset_agrees_with_the_scalar_definition() {
        // Each of the 256 byte values, alone and next to the range's edges, at every position of
        // a word and in the tail, must be classified exactly as the one-byte-at-a-time test does.
        for len in [1usize, 7, 8, 9, 15, 16, 17, 24] {
            for pos in 0..len {
                for b in 0..=255u8 {
                    for fill in [0x21u8, 0x7e, 0x20, b'a'] {
                        let mut v = vec![fill; len];
                        if let Some(slot) = v.get_mut(pos) {
                            *slot = b;
                        }
                        assert_eq!(all_graphic(&v), v.iter().all(u8::is_ascii_graphic), "{v:?}");
                        assert_eq!(all_printable(&v), v.iter().all(|c| (0x20..=0x7e).contains(c)), "{v:?}");
                    }
                }
            }
        }
        assert!(all_graphic(b""));
    }
}
