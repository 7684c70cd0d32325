use mapsentry_policy::enforce::kernel_glob::compile;

use super::*;

/// The kernel's `ms_match_walked` (ebpf/include/path.h), over the entries the agent writes: the
/// longest trie entry starting the path (its reversal), then each candidate's lengths and
/// slashes.
fn kernel_classes(entries: &TableEntries, path: &str) -> u64 {
    let longest = |suffix: bool, text: &[u8]| -> u64 {
        entries
            .tries
            .iter()
            .filter(|(s, entry, _)| *s == suffix && text.starts_with(entry))
            .max_by_key(|(_, entry, _)| entry.len())
            .map_or(0, |(_, _, mask)| *mask)
    };
    let bytes = path.as_bytes();
    let reversed: Vec<u8> = bytes.iter().rev().copied().collect();
    let candidates = longest(false, bytes) & longest(true, &reversed);
    let slashes = path.matches('/').count();
    let mut classes = 0;
    for (bit, p) in entries.patterns.iter().enumerate() {
        if (candidates >> bit) & 1 == 0 {
            continue;
        }
        let (plen, slen) = (usize::from(p.prefix_len), usize::from(p.suffix_len));
        if bytes.len() < plen + slen
            || (p.middle == wire::MIDDLE_EXACT && bytes.len() != plen)
            || (p.middle == wire::MIDDLE_COMPONENT && slashes != usize::from(p.slashes))
        {
            continue;
        }
        classes |= p.classes;
    }
    classes
}

#[test]
fn the_class_tables_name_exactly_the_classes_whose_globs_match() {
    let lists: Vec<Vec<&str>> = vec![
        vec!["/tmp/**", "/var/tmp/**"],
        vec!["/usr/bin/*", "/usr/lib/lib*.so"],
        vec!["**/java", "/opt/**/bin/java"],
        vec!["/memfd:*"],
        vec!["/tmp/x/**", "/usr/bin/java"],
        vec!["**"],
    ];
    let paths: Vec<Vec<KernelPattern>> = lists
        .iter()
        .map(|l| l.iter().flat_map(|g| compile(g).unwrap()).collect())
        .collect();
    let tables = ClassTables {
        comm: vec![vec!["java".into(), "node".into()], vec!["node".into()]],
        paths: paths.clone(),
    };
    let entries = TableEntries::of(&tables).unwrap();
    for path in [
        "/tmp/a",
        "/tmp/x/y",
        "/var/tmp/z",
        "/usr/bin/java",
        "/usr/bin/x/y",
        "/usr/lib/libc.so",
        "/opt/bin/java",
        "/opt/jdk/bin/java",
        "/x/java",
        "/memfd:jit",
        "/memfd:a/b",
        "/",
        "/tmp",
        "/javax",
    ] {
        let expected = paths.iter().enumerate().fold(0u64, |acc, (class, list)| {
            acc | (u64::from(list.iter().any(|p| p.matches(path))) << class)
        });
        assert_eq!(kernel_classes(&entries, path), expected, "{path}");
    }
    assert_eq!(entries.names[&comm_key("node").unwrap()], 0b11);
    assert_eq!(entries.names[&comm_key("java").unwrap()], 0b01);
}

#[test]
fn tables_beyond_the_kernels_bounds_are_an_error() {
    let many: Vec<KernelPattern> = (0..=PATTERNS_PER_TABLE)
        .flat_map(|i| compile(&format!("/p{i}/**")).unwrap())
        .collect();
    let error = TableEntries::of(&ClassTables {
        comm: Vec::new(),
        paths: vec![many],
    })
    .unwrap_err();
    assert!(error.to_string().contains("at most 64"), "{error}");
    let error = TableEntries::of(&ClassTables {
        comm: vec![vec!["a-name-of-16-byte".into()]],
        paths: Vec::new(),
    })
    .unwrap_err();
    assert!(
        error.to_string().contains("longer than 15 bytes"),
        "{error}"
    );
}

#[test]
fn a_rule_says_what_its_second_pass_reads() {
    let rule = KernelRule {
        comm: 1,
        file: Some(FileRule {
            kinds_care: wire::FK_MEMFD,
            kinds_want: wire::FK_MEMFD,
            path: 0,
            not_path: 2,
        }),
        except_executable: 3,
        flags_any: 0,
        types_any: 1 << 2,
        ..KernelRule::default()
    };
    let raw = RawRule::from(&rule);
    assert_eq!(
        raw.needs,
        wire::NEED_COMM | wire::NEED_EXE | wire::NEED_FILE | wire::NEED_KINDS | wire::NEED_PATH
    );
    assert_eq!(
        raw.flags_any_given, 1,
        "a mapping type alone is a flagsAny condition"
    );
    assert_eq!(
        (raw.file_care, raw.file_want),
        (wire::FK_MEMFD, wire::FK_MEMFD)
    );
    assert_eq!(RawRule::from(&KernelRule::default()).needs, 0);
    assert_eq!(RawRule::from(&KernelRule::default()).types_all, u16::MAX);
}
