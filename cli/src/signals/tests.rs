use std::{process::Command, time::Duration};

use super::*;

/// Send `signal` to this test process with kill(1).
fn kill_self(signal: &str) {
    let status = Command::new("kill")
        .args([signal, &std::process::id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {signal}");
}

/// A SIGINT or SIGTERM that arrives after `install` and before anything waits is kept for the
/// first wait: with a handler installed at the first poll, the SIGINT would end this process.
#[tokio::test]
async fn a_signal_before_the_first_wait_is_a_request_to_stop() {
    for signal in ["-INT", "-TERM"] {
        let mut shutdown = Shutdown::install().expect("installing the handlers");
        kill_self(signal);
        tokio::time::timeout(Duration::from_secs(10), shutdown.requested())
            .await
            .unwrap_or_else(|_| panic!("kill {signal} before the first wait was not seen"));
    }
}
