//! A minimal HTTP/1.1 server for plain-text endpoints (`/metrics`, `/healthz`, `/readyz`): one
//! request per connection, the request head read up to [`MAX_REQUEST`] bytes within 10 s, the
//! answer computed by a synchronous handler from the method and the path. Used by the
//! collector's metrics listener and by the agent's.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use tracing::Instrument as _;

/// Most bytes of a request head read before answering.
pub const MAX_REQUEST: usize = 8192;

/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("accepting a connection failed")]
    Accept {
        #[source]
        source: std::io::Error,
    },
}

/// An answer: status code and text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    #[must_use]
    pub fn ok(body: impl Into<String>) -> Self {
        Self {
            status: 200,
            body: body.into(),
        }
    }

    #[must_use]
    pub fn unavailable(body: impl Into<String>) -> Self {
        Self {
            status: 503,
            body: body.into(),
        }
    }

    #[must_use]
    pub fn not_found(body: impl Into<String>) -> Self {
        Self {
            status: 404,
            body: body.into(),
        }
    }

    fn status_line(&self) -> &'static str {
        match self.status {
            200 => "200 OK",
            503 => "503 Service Unavailable",
            404 => "404 Not Found",
            405 => "405 Method Not Allowed",
            _ => "500 Internal Server Error",
        }
    }
}

/// The request handler: `(method, path)` to the reply.
pub type Handler = Arc<dyn Fn(&str, &str) -> Reply + Send + Sync>;

/// Serve `handler` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HttpError> {
    tokio::pin!(shutdown);
    loop {
        let (mut stream, _) = tokio::select! {
            accepted = listener.accept() => accepted.map_err(|source| HttpError::Accept { source })?,
            () = &mut shutdown => return Ok(()),
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(
            async move {
                let mut request = Vec::with_capacity(1024);
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
                    match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
                let line = String::from_utf8_lossy(line);
                let mut words = line.split(' ');
                let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let reply = handler(method, path);
                let response = format!(
                    "HTTP/1.1 {}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{}",
                    reply.status_line(),
                    reply.body.len(),
                    reply.body
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
            .in_current_span(),
        );
    }
}
