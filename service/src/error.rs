//! Errors as one line for the log and for gRPC statuses: the error and each of its sources,
//! joined with `: ` (what `anyhow` prints with `{:#}`, for the library crates that do not use
//! anyhow). A cause whose text the line already holds is left out (aya, for one, repeats its
//! source in its own message).

use std::{error::Error, fmt::Write as _};

/// `error`, then each cause in its source chain not already said, separated by `: `.
#[must_use]
pub fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            let _ = write!(text, ": {said}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
