use super::*;

fn outcome(mode: AttachMode, works: &[AttachMode]) -> Result<String, String> {
    if works.contains(&mode) {
        Ok(format!("{mode}-target"))
    } else {
        Err(format!("{mode} refused"))
    }
}

#[test]
fn auto_takes_the_cheapest_mode_that_works_and_says_why_not_the_others() {
    let mut tried = Vec::new();
    let attached = select(AttachMode::Auto, |mode| {
        tried.push(mode);
        outcome(mode, &[AttachMode::Kprobe, AttachMode::Tracepoint])
    })
    .unwrap();
    assert_eq!(tried, [AttachMode::Fentry, AttachMode::Kprobe]);
    assert_eq!(attached.mode, AttachMode::Kprobe);
    assert_eq!(attached.target, "kprobe-target");
    assert_eq!(
        attached.rejected,
        [(AttachMode::Fentry, "fentry refused".to_owned())]
    );
}

#[test]
fn auto_with_no_working_mode_names_every_mode_and_its_error() {
    let err = select(AttachMode::Auto, |mode| outcome(mode, &[])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no attach mode works on this kernel: fentry: fentry refused; kprobe: kprobe refused; \
         tracepoint: tracepoint refused"
    );
}

#[test]
fn a_forced_mode_is_tried_alone() {
    let mut tried = Vec::new();
    let err = select(AttachMode::Kprobe, |mode| {
        tried.push(mode);
        outcome(mode, &[AttachMode::Tracepoint])
    })
    .unwrap_err();
    assert_eq!(tried, [AttachMode::Kprobe]);
    assert_eq!(
        err.to_string(),
        "attach mode kprobe is not available on this kernel: kprobe refused"
    );
}

#[test]
fn attach_modes_parse_by_name() {
    for mode in [
        AttachMode::Auto,
        AttachMode::Fentry,
        AttachMode::Kprobe,
        AttachMode::Tracepoint,
    ] {
        assert_eq!(mode.as_str().parse::<AttachMode>(), Ok(mode));
    }
    assert!(
        "uprobe"
            .parse::<AttachMode>()
            .unwrap_err()
            .contains("unknown attach mode \"uprobe\"")
    );
}

#[test]
fn verifier_logs_are_cut_to_their_end() {
    assert_eq!(
        brief("loading x: EPERM. Verifier output: "),
        "loading x: EPERM"
    );
    let long = (0..20)
        .map(|i| format!("line {i}"))
        .collect::<Vec<_>>()
        .join("\n");
    let text = brief(&format!("loading x: E2BIG. Verifier output: {long}"));
    assert!(
        text.starts_with("loading x: E2BIG; verifier (last 8 of 20 lines): line 12 / "),
        "{text}"
    );
    assert!(text.ends_with("line 19"), "{text}");
    assert_eq!(brief("no log here"), "no log here");
}
