use super::chain;

#[derive(Debug, thiserror::Error)]
enum Outer {
    #[error("storing batch 7 failed")]
    Store {
        #[source]
        source: std::io::Error,
    },
}

#[test]
fn every_cause_is_named_in_order() {
    let error = Outer::Store {
        source: std::io::Error::other("disk full"),
    };
    assert_eq!(chain(&error), "storing batch 7 failed: disk full");
    assert_eq!(chain(&std::io::Error::other("alone")), "alone");
}

#[derive(Debug, thiserror::Error)]
#[error("loading the program: {source}")]
struct Repeats {
    #[source]
    source: std::io::Error,
}

#[test]
fn a_cause_already_said_is_not_repeated() {
    let error = Repeats {
        source: std::io::Error::other("EPERM"),
    };
    assert_eq!(chain(&error), "loading the program: EPERM");
}
