use std::{
    fmt::Write as _,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

#[derive(Debug, Default)]
struct Fixed {
    ready: AtomicBool,
}

impl Probes for Fixed {
    fn metrics(&self) -> String {
        "# TYPE up gauge\nup 1\n# EOF\n".to_owned()
    }
    fn liveness(&self) -> Reply {
        Reply::ok("ok\n")
    }
    fn readiness(&self) -> Reply {
        if self.ready.load(Relaxed) {
            Reply::ok("ready\n")
        } else {
            Reply::unavailable("not ready: starting\n")
        }
    }
}

/// Every request of `paths` on one kept-alive connection; the last asks the server to close.
async fn get_all(addr: SocketAddr, paths: &[&str]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = String::new();
    for (i, path) in paths.iter().enumerate() {
        let close = if i + 1 == paths.len() {
            "Connection: close\r\n"
        } else {
            ""
        };
        let _ = write!(request, "GET {path} HTTP/1.1\r\nHost: x\r\n{close}\r\n");
    }
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

#[tokio::test]
async fn routes_with_queries_and_keep_alive_and_a_404_elsewhere() {
    let probes = Arc::new(Fixed::default());
    let listener = bind("127.0.0.1:0".parse().unwrap(), true)
        .await
        .unwrap()
        .expect("bound");
    let server = Server::start(listener, Arc::clone(&probes) as Arc<dyn Probes>).unwrap();
    let response = get_all(
        server.addr(),
        &["/metrics?x=1", "/readyz", "/healthz", "/nope"],
    )
    .await;
    let statuses: Vec<&str> = response
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 503 Service Unavailable",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Found"
        ],
        "{response}"
    );
    assert!(
        response.contains("application/openmetrics-text"),
        "{response}"
    );
    assert!(
        response.contains("\r\n\r\nup 1\n") || response.contains("up 1\n"),
        "{response}"
    );
    assert!(response.contains("not ready: starting\n"), "{response}");
    probes.ready.store(true, Relaxed);
    assert!(
        get_all(server.addr(), &["/readyz"])
            .await
            .ends_with("ready\n"),
        "readiness is asked at each request"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_taken_default_address_is_skipped_and_a_taken_flag_address_is_an_error() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    assert!(bind(addr, false).await.unwrap().is_none());
    let error = bind(addr, true).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("--metrics-listen {addr}: cannot bind")
    );
}
