use globset::GlobBuilder;
use proptest::prelude::*;

use super::*;

/// The audit evaluator's meaning of `glob` (crate::compile builds globs this way).
fn globset_matches(glob: &str, path: &str) -> Option<bool> {
    let glob = GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .ok()?;
    Some(glob.compile_matcher().is_match(path))
}

fn kernel_matches(patterns: &[KernelPattern], path: &str) -> bool {
    patterns.iter().any(|p| p.matches(path))
}

const PATHS: &[&str] = &[
    "",
    "/",
    "//",
    "/a",
    "/a/",
    "/a/b",
    "/a//b",
    "/a/b/",
    "/a/x/b",
    "/a/x/y/b",
    "/ab",
    "/a.so",
    "/x/a.so",
    "/tmp",
    "/tmp/",
    "/tmp/x",
    "/tmp/x/y",
    "java",
    "/java",
    "/usr/bin/java",
    "/opt/bin/java",
    "/opt/x/bin/java",
    "/opt/x/y/bin/java",
    "/memfd:jit",
    "/memfd:",
    "/a*b",
    "/axb",
    "/x/a/c",
    "/x/b/c",
    "/x/c/c",
    "/usr/lib/libfoo.so",
    "/usr/lib/x/libfoo.so",
];

#[test]
fn the_usual_globs_compile_to_the_patterns_in_the_table() {
    let cases: &[(&str, &[&str])] = &[
        ("/usr/bin/java", &["/usr/bin/java"]),
        ("/usr/bin/*", &["/usr/bin/<component>"]),
        ("/usr/lib/lib*.so", &["/usr/lib/lib<component>.so"]),
        ("/tmp/**", &["/tmp/<anything>"]),
        ("**/java", &["java", "<anything>/java"]),
        (
            "/opt/**/bin/java",
            &["/opt/bin/java", "/opt/<anything>/bin/java"],
        ),
        ("/x/{a,b}/*", &["/x/a/<component>", "/x/b/<component>"]),
        ("**", &["<anything>"]),
        ("/a**", &["/a<component>"]),
        ("/a\\*b", &["/a*b"]),
    ];
    for (glob, expected) in cases {
        let patterns: Vec<String> = compile(glob)
            .unwrap_or_else(|e| panic!("{glob}: {e}"))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(&patterns, expected, "{glob}");
    }
}

#[test]
fn what_the_kernel_cannot_judge_is_refused_with_the_reason() {
    let cases = [
        ("/a?b", "`?`"),
        ("/lib/[a-z]*.so", "`[...]`"),
        ("**/*.so", "more than one wildcard"),
        ("/home/*/.cache/**", "more than one wildcard"),
        ("/x/{a*,b}", "wildcard inside `{...}`"),
        ("/x/{a,{b,c}}", "nests"),
        ("/x/{a,b", "unclosed"),
        ("/x/a}", "unopened"),
        ("/x/{a,}", "empty alternative"),
        ("/x/***", "more than two `*`"),
        ("/{a,b}{c,d}{e,f}{g,h}{i,j}", "more than 16 alternatives"),
    ];
    for (glob, reason) in cases {
        let error = compile(glob).expect_err(glob);
        assert!(error.contains(reason), "{glob}: {error}");
    }
    let long = format!("/{}/*", "d".repeat(300));
    assert!(compile(&long).unwrap_err().contains("254 bytes"));
}

#[test]
fn accepted_globs_mean_what_the_audit_evaluator_means_on_these_paths() {
    let globs = [
        "/usr/bin/java",
        "/usr/bin/*",
        "/usr/lib/lib*.so",
        "/tmp/**",
        "**/java",
        "/opt/**/bin/java",
        "/x/{a,b}/*",
        "/x/{a,b}/c",
        "**",
        "*",
        "/a**",
        "/a/**b",
        "/a/**/",
        "/a/*/b",
        "/memfd:*",
        "/a\\*b",
        "/a/b**/c",
        "*.so",
        "/**",
        "/a/**/b/",
        "{/a,/b}/**",
    ];
    for glob in globs {
        let patterns = compile(glob).unwrap_or_else(|e| panic!("{glob}: {e}"));
        for path in PATHS {
            assert_eq!(
                Some(kernel_matches(&patterns, path)),
                globset_matches(glob, path),
                "glob {glob:?} path {path:?}: kernel patterns {patterns:?}"
            );
        }
    }
}

fn glob_piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a", "b", "/", "/", ".", "*", "**", "/**/", "**/", "/**", "{a,b}", "{/a,b/}", "\\*", "x",
    ])
}

fn path_piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "/", "/", ".", "*", "x", "ab", "/a/"])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(600))]

    /// Whatever glob the kernel accepts, its patterns match exactly the paths globset matches.
    #[test]
    fn accepted_globs_agree_with_globset(
        glob in prop::collection::vec(glob_piece(), 0..6).prop_map(|p| p.concat()),
        paths in prop::collection::vec(
            prop::collection::vec(path_piece(), 0..8).prop_map(|p| p.concat()), 1..24),
    ) {
        if let Ok(patterns) = compile(&glob) {
            for path in paths.iter().map(String::as_str).chain(PATHS.iter().copied()) {
                if let Some(expected) = globset_matches(&glob, path) {
                    prop_assert_eq!(
                        kernel_matches(&patterns, path), expected,
                        "glob {:?} path {:?}: {:?}", glob, path, patterns
                    );
                }
            }
        }
    }
}

#[test]
fn slashes_count_the_prefix_and_suffix() {
    let p = &compile("/opt/**/bin/java").unwrap()[1];
    assert_eq!(p.slashes(), 4);
    assert!(p.matches("/opt/x/bin/java"));
}
