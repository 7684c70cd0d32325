use super::*;

#[test]
fn a_comma_separated_url_is_one_seed_server_each() {
    assert_eq!(
        server_urls("nats://127.0.0.1:4222, nats://127.0.0.1:4223,,tls://n:4222 "),
        vec![
            "nats://127.0.0.1:4222",
            "nats://127.0.0.1:4223",
            "tls://n:4222"
        ]
    );
    assert_eq!(server_urls("nats://n:4222"), vec!["nats://n:4222"]);
    // async-nats reads a string as one URL: the list as a whole is not an address.
    assert!(
        "nats://a:1,nats://b:2"
            .parse::<async_nats::ServerAddr>()
            .is_err()
    );
}

#[tokio::test]
async fn a_client_starts_for_several_seed_servers() {
    // Nothing listens there: the client starts anyway and connects in the background.
    let config = JetStreamConfig::new("nats://127.0.0.1:9,nats://127.0.0.1:10,nats://127.0.0.1:11");
    let backbone = Backbone::connect(config)
        .await
        .expect("a client for three seed servers");
    assert!(
        backbone
            .unready()
            .is_some_and(|r| r.contains("unreachable")),
        "{:?}",
        backbone.unready()
    );
}
