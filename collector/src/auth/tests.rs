use tonic::Request;

use super::*;

#[test]
fn scopes_allow_only_their_namespaces_and_never_unattributed_events() {
    let scope = Scope::Namespaces(vec!["a".into(), "c".into()]);
    assert!(scope.allows(Some("a")));
    assert!(scope.allows(Some("c")));
    assert!(!scope.allows(Some("b")));
    assert!(!scope.allows(None));
    assert!(Scope::All.allows(Some("b")));
    assert!(Scope::All.allows(None));
}

#[test]
fn the_tokens_file_is_parsed_and_bad_lines_are_named() {
    let tokens = Tokens::parse(
        "t",
        "# comment\n\n{\"token\": \"x\", \"namespaces\": [\"a\"]}\n{\"token\": \"y\", \"namespaces\": [\"*\", \"a\"]}\n",
    )
    .unwrap();
    assert_eq!(format!("{tokens:?}"), "Tokens(2 entries)");
    for (text, line, reason) in [
        ("{\"token\": \"x\"}", 1, "missing field `namespaces`"),
        (
            "\n{\"token\": \"\", \"namespaces\": []}",
            2,
            "token is empty",
        ),
        (
            "{\"token\": \"x\", \"namespaces\": [\"\"]}",
            1,
            "empty name",
        ),
        (
            "{\"token\": \"x\", \"namespaces\": [], \"role\": 1}",
            1,
            "unknown field `role`",
        ),
        (
            "{\"token\": \"x\", \"namespaces\": []}\n{\"token\": \"x\", \"namespaces\": []}",
            2,
            "listed twice",
        ),
        ("token x", 1, "expected"),
    ] {
        let error = Tokens::parse("f.jsonl", text).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("--tokens f.jsonl line {line}: ")) && error.contains(reason),
            "{text:?}: {error}"
        );
    }
}

fn request(header: Option<&str>) -> Request<()> {
    let mut request = Request::new(());
    if let Some(header) = header {
        request
            .metadata_mut()
            .insert("authorization", header.parse().unwrap());
    }
    request
}

#[test]
fn subscribers_and_agents_are_judged_by_their_token() {
    let auth = Auth {
        tokens: Some(
            Tokens::parse(
                "t",
                "{\"token\": \"a\", \"namespaces\": [\"a\"]}\n{\"token\": \"ship\", \"namespaces\": [], \"agent\": true}",
            )
            .unwrap(),
        ),
        client_certs: true,
    };
    assert_eq!(
        auth.subscriber(&request(Some("Bearer a"))).unwrap(),
        Scope::Namespaces(vec!["a".into()])
    );
    for header in [None, Some("Bearer b"), Some("Basic a"), Some("a")] {
        let status = auth.subscriber(&request(header)).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{header:?}");
    }
    auth.agent(&request(Some("Bearer ship"))).unwrap();
    let status = auth.agent(&request(Some("Bearer a"))).unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    // Without tokens everyone who passed TLS reads everything.
    assert_eq!(
        Auth::default().subscriber(&request(None)).unwrap(),
        Scope::All
    );
    Auth::default().agent(&request(None)).unwrap();
}
