//! Every file of the example library (`examples/policies/`) validates, says what it is for in a
//! leading comment, and compiles into one policy set with the others.

use std::path::Path;

use mapsentry_policy::{PolicySet, load_str};

#[test]
fn every_example_policy_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policies");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "the library has shrunk: {files:?}");
    let mut compiled = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.starts_with("# "),
            "{} should start with a comment saying what it catches",
            file.display()
        );
        let outcome = load_str(&text);
        let errors: Vec<String> = outcome.errors.iter().map(ToString::to_string).collect();
        assert!(
            errors.is_empty(),
            "{}:\n{}",
            file.display(),
            errors.join("\n")
        );
        assert!(
            !outcome.policies.is_empty(),
            "{} holds no policy",
            file.display()
        );
        compiled.extend(outcome.policies.into_iter().map(|l| l.compiled));
    }
    PolicySet::new(compiled).expect("example policy names are unique");
}
