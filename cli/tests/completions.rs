//! `mapsentry completions SHELL`: a completion script clap_complete generates from the real
//! command line, for bash, zsh and fish.

use std::process::Command;

#[test]
fn completions_name_the_subcommands_and_flags_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _mapsentry"),
        ("zsh", "#compdef mapsentry"),
        ("fish", "complete -c mapsentry"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_mapsentry"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success(), "{shell}: {output:?}");
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for word in [
            "tail",
            "collector",
            "--alert-output",
            "--since",
            "--timeout",
        ] {
            // fish names long flags `-l NAME`.
            let word = match word.strip_prefix("--") {
                Some(long) if shell == "fish" => format!("-l {long}"),
                _ => word.to_owned(),
            };
            assert!(script.contains(&word), "{shell}: no {word:?}");
        }
    }
    let output = Command::new(env!("CARGO_BIN_EXE_mapsentry"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}
