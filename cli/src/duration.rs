//! Durations as users write them on the command line (`90s`, `10m`, `1h30m`, `2 hours`): jiff's
//! friendly format (ISO 8601 `PT10M` also reads). A plain number is not a duration: the flags
//! that take one say what a number means instead.

use std::time::Duration;

/// A duration that is not negative.
pub fn parse(text: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration = text.trim().parse().map_err(|error| {
        format!("{text:?} is not a duration ({error}); write e.g. 30s, 10m, 1h30m")
    })?;
    Duration::try_from(signed).map_err(|_| format!("{text:?}: a duration cannot be negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friendly_durations_and_their_errors() {
        assert_eq!(parse("10m"), Ok(Duration::from_mins(10)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_mins(90)));
        assert_eq!(parse("90 seconds"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse("-5m").unwrap_err().contains("cannot be negative"));
        assert!(parse("ten minutes").unwrap_err().contains("not a duration"));
        assert!(parse("5").unwrap_err().contains("not a duration"));
    }
}
