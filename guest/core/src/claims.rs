//! Checks shared by every token format: time windows and values that may reach upstream headers.

use std::sync::Arc;

use crate::reason::Reason;
use crate::time::UnixTime;

/// Applies the time rules, in order: expiry, not-before, issued-in-future, lifetime.
///
/// Times are `f64` because JWT NumericDate may carry fractions; every integer a clock can
/// produce is exact in an `f64`.
pub(crate) fn check_times(
    now: UnixTime,
    leeway: f64,
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    max_lifetime: Option<f64>,
) -> Result<(), Reason> {
    let now = now.as_f64();
    if exp.is_some_and(|exp| now >= exp + leeway) {
        return Err(Reason::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now + leeway) {
        return Err(Reason::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now + leeway) {
        return Err(Reason::IssuedInFuture);
    }
    if let (Some(max), Some(iat), Some(exp)) = (max_lifetime, iat, exp)
        && exp - iat > max
    {
        return Err(Reason::LifetimeTooLong);
    }
    Ok(())
}

/// A claim value that may be copied into an upstream header: no control characters (CR and LF
/// would split the header), at most 1 KiB.
pub(crate) fn header_safe(s: &str) -> Result<Arc<str>, Reason> {
    if s.len() > 1024 || (!crate::ascii::all_printable(s.as_bytes()) && s.chars().any(char::is_control)) {
        return Err(Reason::Malformed);
    }
    Ok(Arc::from(s))
}

/// A scope granted by a credential: an RFC 6749 scope-token (wildcard shapes are interpreted
/// by the policy engine, which honours `*` only where the policy allows it).
pub(crate) fn scope_grant(s: &str) -> Result<Arc<str>, Reason> {
    let ok = !s.is_empty()
        && s.len() <= 256
        && s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
    if ok { Ok(Arc::from(s)) } else { Err(Reason::Malformed) }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NOW: UnixTime = UnixTime(1_000_000);

    fn t(exp: Option<f64>, nbf: Option<f64>, iat: Option<f64>, max: Option<f64>) -> Result<(), Reason> {
        check_times(NOW, 30.0, exp, nbf, iat, max)
    }

    #[test]
    fn exp_inside_leeway_is_accepted() {
        assert_eq!(t(Some(1_000_000.0 - 29.0), None, None, None), Ok(()));
    }

    #[test]
    fn exp_at_the_leeway_boundary_is_expired() {
        assert_eq!(t(Some(1_000_000.0 - 30.0), None, None, None), Err(Reason::Expired));
        assert_eq!(t(Some(1_000_000.0 - 29.5), None, None, None), Ok(()), "fractions count");
    }

    #[test]
    fn nbf_beyond_leeway_is_not_yet_valid() {
        assert_eq!(t(None, Some(1_000_030.0), None, None), Ok(()));
        assert_eq!(t(None, Some(1_000_030.5), None, None), Err(Reason::NotYetValid));
    }

    #[test]
    fn iat_beyond_leeway_is_in_the_future() {
        assert_eq!(t(None, None, Some(1_000_030.0), None), Ok(()));
        assert_eq!(t(None, None, Some(1_000_031.0), None), Err(Reason::IssuedInFuture));
    }

    #[test]
    fn lifetime_is_bounded_only_when_iat_is_present() {
        let exp = Some(1_000_100.0);
        assert_eq!(t(exp, None, Some(1_000_000.0 - 3500.0), Some(3600.0)), Ok(()));
        assert_eq!(t(exp, None, Some(1_000_000.0 - 3501.0), Some(3600.0)), Err(Reason::LifetimeTooLong));
        assert_eq!(t(exp, None, None, Some(1.0)), Ok(()));
    }

    #[test]
    fn expiry_is_reported_before_other_time_defects() {
        assert_eq!(t(Some(0.0), Some(2e6), Some(2e6), Some(1.0)), Err(Reason::Expired));
    }

    #[test]
    fn header_unsafe_values_are_refused() {
        assert!(header_safe("alice").is_ok());
        assert_eq!(header_safe("a\r\nX-Admin: 1"), Err(Reason::Malformed));
        assert_eq!(header_safe("a\u{7f}"), Err(Reason::Malformed));
        assert_eq!(header_safe(&"a".repeat(1025)), Err(Reason::Malformed));
    }

    #[test]
    fn scope_grants_are_rfc6749_tokens() {
        assert!(scope_grant("admin:*").is_ok());
        for bad in ["", "a\"b", "caf\u{e9}", "a\\b"] {
            assert_eq!(scope_grant(bad), Err(Reason::Malformed), "{bad:?}");
        }
    }
}
