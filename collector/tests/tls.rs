//! TLS, mutual TLS and bearer tokens over real gRPC on 127.0.0.1 with certificates made here
//! (rcgen): who is let in, who is refused and with which words, and what a namespace-scoped
//! subscriber sees.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use mapsentry_collector::{
    Hub, HubConfig, ServerConfig,
    auth::{Auth, Tokens},
    follow::{FollowError, Followed, Follower},
    serve,
    tls::ServerTls,
};
use mapsentry_proto::{
    client::{self, ClientSecurity},
    v1::{
        self, AgentMessage, CollectorMessage, Event, EventBatch, Filter, Hello, MmapArgs,
        SubscribeRequest, agent_message::Msg, agent_service_client::AgentServiceClient,
        collector_message,
    },
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tempfile::TempDir;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;

/// A CA that signs leaf certificates, written as PEM files into a directory.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses): (cert PEM, key PEM).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Pki {
    dir: TempDir,
}

impl Pki {
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// Server cert for 127.0.0.1 from `ca`; client certs from `ca` and from a stranger CA.
fn pki() -> (Pki, Ca) {
    let pki = Pki {
        dir: tempfile::tempdir().unwrap(),
    };
    let ca = Ca::new("mapsentry test CA");
    pki.write("ca.crt", &ca.pem);
    let (cert, key) = ca.leaf(&["127.0.0.1", "localhost"]);
    pki.write("server.crt", &cert);
    pki.write("server.key", &key);
    let (cert, key) = ca.leaf(&["agent-1"]);
    pki.write("client.crt", &cert);
    pki.write("client.key", &key);
    let stranger = Ca::new("someone else's CA");
    let (cert, key) = stranger.leaf(&["agent-x"]);
    pki.write("stranger.crt", &cert);
    pki.write("stranger.key", &key);
    (pki, ca)
}

async fn start(server: ServerConfig) -> (SocketAddr, Arc<Hub>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hub = Hub::with_first_cursor(HubConfig::default(), 1);
    let serving = Arc::clone(&hub);
    tokio::spawn(async move {
        serve(serving, &server, listener, std::future::pending())
            .await
            .expect("server runs");
    });
    (addr, hub)
}

fn tls(pki: &Pki, client_ca: bool) -> ServerTls {
    ServerTls {
        cert: pki.dir.path().join("server.crt"),
        key: pki.dir.path().join("server.key"),
        client_ca: client_ca.then(|| pki.dir.path().join("ca.crt")),
    }
}

fn security(pki: &Pki, client: Option<&str>, token: Option<&str>) -> ClientSecurity {
    ClientSecurity {
        ca: Some(pki.dir.path().join("ca.crt")),
        cert: client.map(|c| pki.dir.path().join(format!("{c}.crt"))),
        key: client.map(|c| pki.dir.path().join(format!("{c}.key"))),
        token_file: token.map(|t| pki.write(&format!("token-{t}"), &format!("{t}\n"))),
    }
}

async fn stats(addr: SocketAddr, security: &ClientSecurity) -> Result<(), FollowError> {
    let mut follower = Follower::secured(
        &format!("https://{addr}"),
        SubscribeRequest::default(),
        1 << 20,
        security,
    )?;
    tokio::time::timeout(Duration::from_secs(10), follower.stats())
        .await
        .expect("an answer within 10 s")
        .map(drop)
}

fn denied(result: Result<(), FollowError>) -> String {
    match result {
        Err(FollowError::Denied { reason }) => reason,
        other => panic!("expected a refusal with a reason, got {other:?}"),
    }
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_ca_and_refuses_those_that_do_not() {
    let (pki, _ca) = pki();
    let (addr, _hub) = start(ServerConfig {
        tls: Some(tls(&pki, false)),
        ..ServerConfig::default()
    })
    .await;
    stats(addr, &security(&pki, None, None))
        .await
        .expect("a client with the CA is served over TLS");

    let other = Ca::new("not the server's CA");
    let wrong_ca = ClientSecurity {
        ca: Some(pki.write("other-ca.crt", &other.pem)),
        ..ClientSecurity::default()
    };
    let reason = denied(stats(addr, &wrong_ca).await);
    assert!(
        reason.starts_with("certificate: the collector's certificate is not trusted"),
        "{reason}"
    );
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_or_with_a_strangers() {
    let (pki, _ca) = pki();
    let (addr, _hub) = start(ServerConfig {
        tls: Some(tls(&pki, true)),
        ..ServerConfig::default()
    })
    .await;
    stats(addr, &security(&pki, Some("client"), None))
        .await
        .expect("a client certificate from the client CA is accepted");
    for client in [None, Some("stranger")] {
        let reason = denied(stats(addr, &security(&pki, client, None)).await);
        assert!(
            reason.starts_with("certificate: the collector refused this client's certificate"),
            "client {client:?}: {reason}"
        );
    }
}

#[tokio::test]
async fn server_certificates_are_reloaded_when_the_files_change() {
    let (pki, _ca) = pki();
    let (addr, _hub) = start(ServerConfig {
        tls: Some(tls(&pki, false)),
        ..ServerConfig::default()
    })
    .await;
    stats(addr, &security(&pki, None, None)).await.unwrap();
    // Rotate to a certificate from a new CA: clients that trust only the old CA are refused,
    // clients given the new CA are served, without a restart.
    let rotated = Ca::new("rotated CA");
    let (cert, key) = rotated.leaf(&["127.0.0.1"]);
    // A later modification time than the first files, on filesystems with coarse stamps too.
    tokio::time::sleep(Duration::from_millis(20)).await;
    pki.write("server.key", &key);
    pki.write("server.crt", &cert);
    let reason = denied(stats(addr, &security(&pki, None, None)).await);
    assert!(reason.contains("not trusted"), "{reason}");
    let trusting = ClientSecurity {
        ca: Some(pki.write("rotated-ca.crt", &rotated.pem)),
        ..ClientSecurity::default()
    };
    stats(addr, &trusting)
        .await
        .expect("the rotated certificate is served");
}

const TOKENS: &str = r#"
# test tokens
{"token": "team-a", "namespaces": ["a"]}
{"token": "ops", "namespaces": ["*"]}
{"token": "shipper", "namespaces": [], "agent": true}
"#;

fn event(pid: u32) -> Event {
    Event {
        syscall: v1::Syscall::Mmap.into(),
        pid,
        tid: pid,
        comm: "test".into(),
        args: Some(MmapArgs {
            length: 4096,
            prot: 3,
            flags: 0x22,
            fd: -1,
            ..MmapArgs::default()
        }),
        ..Event::default()
    }
}

#[tokio::test]
async fn bearer_tokens_authenticate_and_scope_subscribers() {
    let (pki, _ca) = pki();
    let (addr, _hub) = start(ServerConfig {
        tls: Some(tls(&pki, false)),
        auth: Auth {
            tokens: Some(Tokens::parse("test", TOKENS).unwrap()),
            client_certs: false,
        },
        ..ServerConfig::default()
    })
    .await;
    let url = format!("https://{addr}");

    let reason = denied(stats(addr, &security(&pki, None, None)).await);
    assert!(
        reason.starts_with("unauthenticated: no bearer token"),
        "{reason}"
    );
    let reason = denied(stats(addr, &security(&pki, None, Some("guess"))).await);
    assert!(
        reason.starts_with("unauthenticated: the bearer token is not known"),
        "{reason}"
    );

    // A token scoped to namespace a may not ask for namespace b.
    let mut follower = Follower::secured(
        &url,
        SubscribeRequest {
            filter: Some(Filter {
                namespaces: vec!["b".into()],
                ..Filter::default()
            }),
            ..SubscribeRequest::default()
        },
        1 << 20,
        &security(&pki, None, Some("team-a")),
    )
    .unwrap();
    match follower.next().await {
        Err(FollowError::Denied { reason }) => assert_eq!(
            reason,
            "permission denied: filter.namespaces: \"b\" is outside the namespaces this client may read"
        ),
        other => panic!("expected permission denied, got {other:?}"),
    }

    // Agents need a token marked agent (a subscriber token is refused).
    let (endpoint, _) = client::endpoint(&url, &security(&pki, None, None)).unwrap();
    let channel = endpoint.connect().await.unwrap();
    let ship = |token: &'static str, pid: u32| {
        let channel = channel.clone();
        async move {
            let (out, rx) = mpsc::channel(4);
            out.send(AgentMessage {
                msg: Some(Msg::Hello(Hello {
                    version: v1::ProtocolVersion::V1.into(),
                    node: "n1".into(),
                    boot_id: format!("boot-{pid}"),
                    ..Hello::default()
                })),
            })
            .await
            .unwrap();
            out.send(AgentMessage {
                msg: Some(Msg::Batch(EventBatch {
                    seq: 1,
                    events: vec![event(pid)],
                })),
            })
            .await
            .unwrap();
            let mut request = Request::new(ReceiverStream::new(rx));
            client::BearerToken::new(token).unwrap().apply(&mut request);
            let mut acks = AgentServiceClient::new(channel)
                .connect(request)
                .await?
                .into_inner();
            let ack = acks.message().await?;
            assert!(
                matches!(
                    ack,
                    Some(CollectorMessage {
                        msg: Some(collector_message::Msg::Ack(_))
                    })
                ),
                "{ack:?}"
            );
            drop(out);
            Ok::<_, tonic::Status>(())
        }
    };
    let status = ship("team-a", 1).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // The ops token sees the event; the team-a token does not (events carry no namespace yet,
    // so nothing is in namespace a: the scope filter lets none through).
    let follow = |token: &str| {
        Follower::secured(
            &url,
            SubscribeRequest::default(),
            1 << 20,
            &security(&pki, None, Some(token)),
        )
        .unwrap()
    };
    let mut ops = follow("ops");
    let mut team_a = follow("team-a");
    for follower in [&mut ops, &mut team_a] {
        assert!(matches!(
            follower.next().await.unwrap(),
            Followed::Started(_)
        ));
    }
    ship("shipper", 7).await.expect("the agent token ships");
    match tokio::time::timeout(Duration::from_secs(5), ops.next()).await {
        Ok(Ok(Followed::Record(record))) => {
            assert_eq!(record.event.unwrap().pid, 7);
        }
        other => panic!("ops expected the event, got {other:?}"),
    }
    let nothing = tokio::time::timeout(Duration::from_millis(500), team_a.next()).await;
    assert!(nothing.is_err(), "team-a saw {nothing:?}");
}
