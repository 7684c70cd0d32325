use std::time::{Duration, Instant};

use super::*;

const LIMITS: TextLimits = TextLimits::DEFAULT;

fn examples() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policies");
    let mut texts = Vec::new();
    for entry in std::fs::read_dir(dir).expect("examples/policies") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            texts.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
    assert!(!texts.is_empty());
    texts
}

#[test]
fn every_example_policy_is_within_the_limits_with_room_to_spare() {
    for (path, text) in examples() {
        assert_eq!(check(&text, LIMITS), Ok(()), "{path}");
        let tight = TextLimits {
            max_depth: 12,
            ..LIMITS
        };
        assert_eq!(check(&text, tight), Ok(()), "{path} nests at most 12");
    }
}

#[test]
fn deeply_nested_flow_collections_are_refused_at_once() {
    let depth = 200_000;
    let text = format!("a: {}1{}\n", "{a: ".repeat(depth), "}".repeat(depth));
    let start = Instant::now();
    let error = check(
        &text,
        TextLimits {
            max_bytes: 4 << 20,
            ..LIMITS
        },
    )
    .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        error,
        TextLimitError::TooDeep {
            depth: 65,
            line: 1,
            max: 64
        }
    );
    assert_eq!(
        error.to_string(),
        "nesting depth 65 at line 1 is more than the limit of 64"
    );
    let sequences = format!("{}{}", "[".repeat(70), "]".repeat(70));
    assert!(matches!(
        check(&sequences, LIMITS),
        Err(TextLimitError::TooDeep { .. })
    ));
    let over_lines: String = (0..70).map(|_| "[\n").collect();
    assert!(matches!(
        check(&over_lines, LIMITS),
        Err(TextLimitError::TooDeep { line: 64, .. })
    ));
}

#[test]
fn deep_block_nesting_and_compact_sequences_count_too() {
    let block: String = (0..70).fold(String::new(), |mut text, i| {
        text.push_str(&" ".repeat(i));
        text.push_str("a:\n");
        text
    });
    assert!(matches!(
        check(&block, LIMITS),
        Err(TextLimitError::TooDeep { line: 65, .. })
    ));
    let compact = format!("{}x\n", "- ".repeat(70));
    assert!(matches!(
        check(&compact, LIMITS),
        Err(TextLimitError::TooDeep { line: 1, .. })
    ));
    let shallow: String = (0..200).fold(String::new(), |mut text, i| {
        text.push('k');
        text.push_str(&i.to_string());
        text.push_str(": v\n");
        text
    });
    assert_eq!(check(&shallow, LIMITS), Ok(()));
}

#[test]
fn brackets_in_quotes_comments_and_block_scalars_are_not_nesting() {
    let brackets = "[".repeat(100);
    let text = format!(
        "a: '{brackets}'\nb: \"{brackets}\\\"{brackets}\"\nc: x # {brackets}\nd: |\n  {brackets}\n  {brackets}\ne: >-\n  {brackets}\nf: it's [fine]\n"
    );
    assert_eq!(check(&text, LIMITS), Ok(()));
}

#[test]
fn too_many_documents_and_too_many_bytes_are_refused() {
    let docs = "---\na: 1\n".repeat(1001);
    assert_eq!(
        check(&docs, LIMITS),
        Err(TextLimitError::TooManyDocuments { max: 1000 })
    );
    assert_eq!(check(&"---\na: 1\n".repeat(999), LIMITS), Ok(()));
    let big = "#".repeat((1 << 20) + 1);
    assert_eq!(
        check(&big, LIMITS).unwrap_err().to_string(),
        "larger than the limit of 1048576 bytes for a policy file"
    );
}
