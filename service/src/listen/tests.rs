use std::time::Instant;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

async fn acceptor(max: usize) -> Acceptor {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Acceptor::new(listener, max, "test")
}

#[tokio::test]
async fn a_peer_trickling_its_first_bytes_is_cut_off_at_the_deadline() {
    let mut acceptor = acceptor(4).await;
    let addr = acceptor.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        for _ in 0..20 {
            if tcp.write_all(b"P").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (tcp, _, slot) = acceptor.accept().await;
    let mut conn = Conn::new(tcp, slot).with_first_bytes(24, Duration::from_millis(500));
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let error = loop {
        match conn.read(&mut buf).await {
            Ok(0) => panic!("the client ended first"),
            Ok(_) => {}
            Err(error) => break error,
        }
    };
    let took = start.elapsed();
    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    client.abort();
}

#[tokio::test]
async fn a_peer_sending_its_first_bytes_in_time_is_served_without_a_deadline() {
    let mut acceptor = acceptor(4).await;
    let addr = acceptor.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&[b'x'; 24]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        tcp.write_all(b"later").await.unwrap();
    });
    let (tcp, _, slot) = acceptor.accept().await;
    let mut conn = Conn::new(tcp, slot).with_first_bytes(24, Duration::from_millis(300));
    let mut got = Vec::new();
    conn.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), 29);
    client.await.unwrap();
}

#[tokio::test]
async fn beyond_the_most_connections_the_next_accept_waits_for_a_slot() {
    let mut acceptor = acceptor(1).await;
    let addr = acceptor.local_addr().unwrap();
    let _a = TcpStream::connect(addr).await.unwrap();
    let _b = TcpStream::connect(addr).await.unwrap();
    let (first, _, slot) = acceptor.accept().await;
    let conn = Conn::new(first, slot);
    let second = tokio::time::timeout(Duration::from_millis(300), acceptor.accept()).await;
    assert!(second.is_err(), "no slot while the first is open");
    drop(conn);
    let second = tokio::time::timeout(Duration::from_secs(5), acceptor.accept()).await;
    assert!(second.is_ok(), "the freed slot is taken");
}
