use super::*;
use crate::selector::Labels;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn every_operator_of_the_kubernetes_syntax() {
    let web = labels(&[("app", "web"), ("tier", "fe"), ("env", "prod")]);
    let db = labels(&[("app", "db"), ("env", "dev"), ("canary", "")]);
    let none = Labels::new();
    let cases: &[(&str, [bool; 3])] = &[
        ("app=web", [true, false, false]),
        ("app==web", [true, false, false]),
        ("app!=web", [false, true, true]),
        ("tier", [true, false, false]),
        ("!tier", [false, true, true]),
        ("env in (prod,staging)", [true, false, false]),
        ("env notin (prod, staging)", [false, true, true]),
        ("app in (web),env notin (dev)", [true, false, false]),
        (" app = web , tier ", [true, false, false]),
        ("canary=", [false, true, false]),
        ("canary in (x,,y)", [false, true, false]),
        ("example.com/team!=a", [true, true, true]),
    ];
    for (text, want) in cases {
        let selector = Selector::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let got = [&web, &db, &none].map(|l| selector.matches(l));
        assert_eq!(&got, want, "{text:?}");
    }
}

#[test]
fn malformed_text_is_refused_with_the_reason() {
    for (text, reason) in [
        ("", "no requirement"),
        ("=web", "expected a label key, found \"=\""),
        ("!", "expected a label key, found the end"),
        ("app=we b", "expected \",\" or the end, found \"b\""),
        (
            "a b",
            "expected =, ==, !=, in or notin after \"a\", found \"b\"",
        ),
        ("app=web=x", "expected \",\" or the end, found \"=\""),
        ("app=web,", "a requirement must follow \",\""),
        ("env in prod", "expected \"(\" after \"in\""),
        (
            "env in (a b)",
            "expected \",\" or \")\" in the values of \"env\", found \"b\"",
        ),
        (
            "env in (a",
            "expected \",\" or \")\" in the values of \"env\", found the end",
        ),
    ] {
        let error = Selector::parse(text).expect_err(text);
        assert_eq!(error.reason, reason, "{text:?}");
        assert_eq!(error.text, text);
    }
}

#[test]
fn keys_and_values_get_the_api_servers_checks() {
    let error = Selector::parse("app=we$b").unwrap_err();
    assert!(error.reason.contains("invalid label value"), "{error}");
    let error = Selector::parse("-app").unwrap_err();
    assert!(error.reason.contains("invalid label key"), "{error}");
}

#[test]
fn requirements_split_at_top_level_commas() {
    assert_eq!(
        split_requirements("app=web, env in (a,b),!canary"),
        ["app=web", "env in (a,b)", "!canary"]
    );
    assert_eq!(split_requirements("x"), ["x"]);
}
