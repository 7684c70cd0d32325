use mapsentry_policy::{MmapEvent, Syscall};

use super::EventFilter;

fn event(comm: &str, syscall: Syscall, prot: u64) -> MmapEvent {
    MmapEvent {
        syscall,
        ..MmapEvent::anonymous(comm, 1, 4096, prot, 0x22)
    }
}

fn filter(comms: &[&str], syscalls: &[&str], prot_any: &[&str]) -> anyhow::Result<EventFilter> {
    let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    EventFilter::from_args(&own(comms), &own(syscalls), &own(prot_any))
}

#[test]
fn each_filter_narrows_the_stream() {
    let events = [
        event("java", Syscall::Mmap, 0x3),
        event("java", Syscall::Mmap, 0x5),
        event("node", Syscall::Mmap2, 0x7),
        event("sh", Syscall::OldMmap, 0x1),
    ];
    let cases: [(&str, EventFilter, [bool; 4]); 5] = [
        (
            "none",
            filter(&[], &[], &[]).unwrap(),
            [true, true, true, true],
        ),
        (
            "comm",
            filter(&["java"], &[], &[]).unwrap(),
            [true, true, false, false],
        ),
        (
            "syscall",
            filter(&[], &["mmap2", "old_mmap"], &[]).unwrap(),
            [false, false, true, true],
        ),
        (
            "prot-any",
            filter(&[], &[], &["PROT_EXEC"]).unwrap(),
            [false, true, true, false],
        ),
        (
            "all",
            filter(&["java", "node"], &["mmap"], &["PROT_WRITE,PROT_EXEC"]).unwrap(),
            [true, true, false, false],
        ),
    ];
    for (name, filter, expected) in cases {
        let got: Vec<bool> = events.iter().map(|e| filter.matches(e)).collect();
        assert_eq!(got, expected, "case {name}");
    }
}

#[test]
fn bad_filter_words_are_named() {
    let err = filter(&[], &["mmap3"], &[]).unwrap_err().to_string();
    assert!(err.contains("--syscall \"mmap3\""), "{err}");
    let err = filter(&[], &[], &["PROT_WRIT"]).unwrap_err().to_string();
    assert!(
        err.contains("--prot-any \"PROT_WRIT\": unknown protection"),
        "{err}"
    );
    let err = filter(&[], &[], &["PROT_NONE"]).unwrap_err().to_string();
    assert!(err.contains("PROT_NONE has no bits"), "{err}");
}
