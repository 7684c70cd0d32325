//! Times as every human-facing output writes them: RFC 3339 in UTC (`2026-11-27T09:44:07.570592Z`),
//! from nanoseconds since the Unix epoch, by jiff's printer. One formatter for event lines, alert
//! lines and the policy objects' status.

use jiff::Timestamp;

/// How many fractional digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Whole seconds (Kubernetes `Time` fields).
    Seconds,
    /// Microseconds (event and alert lines).
    Micros,
}

/// `unix_ns` in RFC 3339, UTC; empty when out of range (past the year 9999).
#[must_use]
pub fn rfc3339(unix_ns: u64, precision: Precision) -> String {
    let Ok(time) = Timestamp::from_nanosecond(i128::from(unix_ns)) else {
        return String::new();
    };
    match precision {
        Precision::Seconds => format!("{time:.0}"),
        Precision::Micros => format!("{time:.6}"),
    }
}

/// Now, in nanoseconds since the Unix epoch (0 before it).
#[must_use]
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
