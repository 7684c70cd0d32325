//! Hostile policy YAML, as a stable-toolchain fuzz loop (proptest): the limits pre-scan and the
//! loader (`load_str`) on arbitrary text and on YAML-shaped text returns policies or problems, never panics. `fuzz/`
//! holds the same target for cargo-fuzz. PROPTEST_CASES raises the case count.

use proptest::prelude::*;

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let _ = mapsentry_policy::limits::check(&text, mapsentry_policy::limits::TextLimits::DEFAULT);
        let _ = mapsentry_policy::load::load_str(&text);
    }

    #[test]
    fn yaml_shaped_text_never_panics(text in "(apiVersion: mapsentry.dev/v1alpha1\nkind: (MmapPolicy|ClusterMmapPolicy)\n)?(metadata:\n  name: [a-z]{0,5}\n  namespace: [a-z]{0,3}\n)?(spec:\n)?(  [a-zA-Z]{1,8}: ([A-Za-z_|0-9]{0,10}|\\[\\]|\\{\\}|- [a-z]{0,4})\n){0,8}(---\n)?") {
        let _ = mapsentry_policy::load::load_str(&text);
    }
}

/// The example policies, read once.
fn examples() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policies");
    let mut texts: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .collect();
    texts.sort();
    assert!(!texts.is_empty(), "no examples in {dir}");
    texts
}

proptest! {
    /// Real policies with a random cut and a random byte replaced: close to valid, so the loader
    /// goes deep (validation, compilation) before it finds what is wrong.
    #[test]
    fn mutated_examples_never_panic(pick in any::<usize>(), cut in any::<usize>(), at in any::<usize>(), byte in any::<u8>()) {
        let texts = examples();
        let mut bytes = texts[pick % texts.len()].clone().into_bytes();
        bytes.truncate(bytes.len() - cut % (bytes.len() / 4 + 1));
        if !bytes.is_empty() {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        let _ = mapsentry_policy::load::load_str(&String::from_utf8_lossy(&bytes));
    }
}
