//! Errors as one line for the log and for gRPC statuses: the error and each of its sources,
//! joined with `: ` (what `anyhow` prints with `{:#}`, for the library crates that do not use
//! anyhow).

use std::{error::Error, fmt::Write as _};

/// `error`, then each cause in its source chain, separated by `: `.
#[must_use]
pub fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
