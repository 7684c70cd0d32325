use std::path::PathBuf;

use super::*;

#[test]
fn tls_files_on_a_plaintext_url_are_refused() {
    let security = ClientSecurity {
        ca: Some(PathBuf::from("/nonexistent/ca.crt")),
        ..ClientSecurity::default()
    };
    let error = endpoint("http://127.0.0.1:1", &security).unwrap_err();
    assert!(
        matches!(&error, ClientError::TlsOnPlaintext { flags, .. } if flags == "--ca"),
        "{error}"
    );
}

#[test]
fn cert_without_key_is_refused() {
    let security = ClientSecurity {
        cert: Some(PathBuf::from("/nonexistent/tls.crt")),
        ..ClientSecurity::default()
    };
    let error = endpoint("https://127.0.0.1:1", &security).unwrap_err();
    assert!(matches!(error, ClientError::HalfIdentity), "{error}");
}

#[test]
fn unknown_scheme_and_missing_files_are_named() {
    let error = endpoint("ftp://x:1", &ClientSecurity::default()).unwrap_err();
    assert!(matches!(error, ClientError::Scheme { .. }), "{error}");
    let security = ClientSecurity {
        ca: Some(PathBuf::from("/nonexistent/ca.crt")),
        ..ClientSecurity::default()
    };
    let error = endpoint("https://127.0.0.1:1", &security).unwrap_err();
    assert_eq!(
        error.to_string(),
        "--ca /nonexistent/ca.crt: cannot read it"
    );
}

#[test]
fn bearer_tokens_are_checked_and_hidden() {
    assert!(BearerToken::new("").is_err());
    assert!(BearerToken::new("a\nb").is_err());
    let token = BearerToken::new("s3cret").unwrap();
    assert_eq!(format!("{token:?}"), "BearerToken(..)");
    let mut request = Request::new(());
    token.apply(&mut request);
    assert_eq!(
        request.metadata().get("authorization").unwrap(),
        "Bearer s3cret"
    );
}

#[test]
fn refusals_say_why() {
    let why = refusal(&Status::unauthenticated("no bearer token")).unwrap();
    assert!(why.starts_with("unauthenticated: no bearer token"), "{why}");
    let why = refusal(&Status::permission_denied("namespace b")).unwrap();
    assert_eq!(why, "permission denied: namespace b");
    assert_eq!(refusal(&Status::unavailable("connection refused")), None);
}
