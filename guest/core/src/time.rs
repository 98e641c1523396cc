//! Time as the core sees it: a number handed in by the host, never read from a clock.

use std::fmt;

/// Seconds since the Unix epoch, supplied by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct UnixTime(pub i64);

impl UnixTime {
    /// The value as `f64`, for comparison with fractional JWT times.
    #[allow(clippy::cast_precision_loss)]
    pub fn as_f64(self) -> f64 {
        self.0 as f64
    }

    /// Parses either integer seconds or an RFC 3339 timestamp (`2027-01-01T00:00:00Z`).
    pub fn parse(s: &str) -> Result<UnixTime, crate::types::ValueError> {
        if let Ok(n) = s.parse::<i64>() {
            return Ok(UnixTime(n));
        }
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map(|t| UnixTime(t.unix_timestamp()))
            .map_err(|_| crate::types::ValueError::Time(s.to_owned()))
    }
}

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn rfc3339_and_seconds_parse_to_the_same_instant() {
        assert_eq!(UnixTime::parse("1798761600"), Ok(UnixTime(1_798_761_600)));
        assert_eq!(UnixTime::parse("2027-01-01T00:00:00Z"), Ok(UnixTime(1_798_761_600)));
        assert_eq!(UnixTime::parse("2027-01-01T01:00:00+01:00"), Ok(UnixTime(1_798_761_600)));
        assert!(UnixTime::parse("tomorrow").is_err());
        assert!(UnixTime::parse("2027-01-01").is_err());
    }
}
