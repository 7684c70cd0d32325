use super::*;

fn facts<'a>(
    built: bool,
    release: &'a str,
    cmdline: &'a str,
    config: Option<&'a str>,
) -> Facts<'a> {
    Facts {
        ia32_syscalls_built: built,
        release,
        cmdline,
        config,
    }
}

const ON_BY_DEFAULT: &str =
    "CONFIG_IA32_EMULATION=y\n# CONFIG_IA32_EMULATION_DEFAULT_DISABLED is not set\n";
const OFF_BY_DEFAULT: &str = "CONFIG_IA32_EMULATION=y\nCONFIG_IA32_EMULATION_DEFAULT_DISABLED=y\n";

#[test]
fn a_kernel_built_without_ia32_emulation_refuses_ia32_calls_whatever_its_command_line() {
    let answer = decide(&facts(
        false,
        "6.1.0-57-cloud-amd64",
        "ia32_emulation=1",
        None,
    ));
    assert_eq!(
        answer,
        Ia32Calls::Refused(
            "built without ia32 emulation (no __ia32_sys_* in /proc/kallsyms)".into()
        )
    );
}

#[test]
fn the_boot_switch_decides_from_6_7_on_and_the_last_valid_one_counts() {
    let off = "console=ttyS0 ia32_emulation=false quiet";
    assert_eq!(
        decide(&facts(
            true,
            "6.12.48+deb12-cloud-amd64",
            off,
            Some(ON_BY_DEFAULT)
        )),
        Ia32Calls::Refused("booted with ia32_emulation=false".into())
    );
    assert_eq!(
        decide(&facts(
            true,
            "6.7.0",
            "ia32_emulation=0 ia32_emulation=on",
            None
        )),
        Ia32Calls::Run("booted with ia32_emulation=on".into())
    );
    // A value the kernel cannot parse leaves the earlier one (and the default) in force.
    assert_eq!(
        decide(&facts(
            true,
            "6.18.44",
            "ia32_emulation=N ia32_emulation=maybe",
            None
        )),
        Ia32Calls::Refused("booted with ia32_emulation=N".into())
    );
    for (value, on) in [
        ("y", true),
        ("Yes", true),
        ("1", true),
        ("true", true),
        ("on", true),
    ]
    .into_iter()
    .chain([("n", false), ("0", false), ("False", false), ("off", false)])
    {
        assert_eq!(kstrtobool(value), Some(on), "{value}");
    }
    assert_eq!(kstrtobool("o"), None);
    assert_eq!(kstrtobool(""), None);
}

#[test]
fn kernels_before_6_7_run_ia32_calls_whatever_the_command_line_says() {
    let answer = decide(&facts(
        true,
        "6.6.30",
        "ia32_emulation=false",
        Some(OFF_BY_DEFAULT),
    ));
    assert_eq!(
        answer,
        Ia32Calls::Run("built with ia32 emulation, which 6.6.30 cannot turn off".into())
    );
    let answer = decide(&facts(true, "weird", "ia32_emulation=false", None));
    assert!(matches!(answer, Ia32Calls::Run(_)), "{answer:?}");
}

#[test]
fn the_init_s_arguments_after_the_double_dash_are_not_the_kernel_s() {
    let answer = decide(&facts(
        true,
        "6.12.1",
        "quiet -- ia32_emulation=false",
        Some(ON_BY_DEFAULT),
    ));
    assert_eq!(
        answer,
        Ia32Calls::Run("built with ia32 emulation, on by default".into())
    );
}

#[test]
fn without_a_switch_the_build_default_decides_and_an_unknown_default_counts_as_on() {
    assert_eq!(
        decide(&facts(true, "6.12.1", "quiet", Some(OFF_BY_DEFAULT))),
        Ia32Calls::Refused(
            "built with IA32_EMULATION_DEFAULT_DISABLED and not turned on at boot".into()
        )
    );
    let unknown = decide(&facts(true, "6.12.1", "quiet", None));
    assert!(
        matches!(&unknown, Ia32Calls::Run(why) if why.starts_with("assumed")),
        "{unknown:?}"
    );
}

#[test]
fn this_kernel_answers_with_its_evidence() {
    // Whatever the machine: the answer names why, and a kernel that made this test's own
    // process able to read kallsyms says something other than "cannot read".
    let answer = ia32_calls();
    assert!(!answer.reason().is_empty());
    assert!(!answer.reason().contains("cannot read"), "{answer:?}");
}
