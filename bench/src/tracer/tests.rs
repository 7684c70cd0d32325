use super::*;
use crate::peer::{BPFTRACE_READY, Bpftrace};

fn sh(script: &str) -> Command {
    let mut command = Command::new("sh");
    command.args(["-c", script]);
    command
}

/// utime and stime are read after the command name, whatever the name holds.
#[test]
fn cpu_time_is_read_after_the_command_name() {
    let stat = "4242 (a) b (c) 7) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0";
    assert_eq!(parse_cpu_ns(stat), Some(281.0 * 10_000_000.0));
    assert_eq!(parse_cpu_ns("4242 (x) S 1"), None);
}

/// A tracer that cannot attach (bpftrace without tracefs, say) is reported at once, with what
/// it said, not after the attach timeout.
#[test]
fn a_tracer_that_exits_before_attaching_is_reported_with_its_words() {
    let started = Instant::now();
    let Err(error) = Tracer::start(
        sh("echo 'ERROR: tracefs not mounted' >&2; exit 3"),
        BPFTRACE_READY,
    ) else {
        panic!("a tracer that exits is an error");
    };
    assert!(
        error.contains("exited before attaching") && error.contains("tracefs not mounted"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{error}");
}

/// Stopped with SIGINT, as a user stops bpftrace: every line it printed is counted, the
/// `@calls` count it prints at exit is read, and both survive its exit.
#[test]
fn what_a_stopped_tracer_printed_is_read() {
    let tracer = Tracer::start(
        sh("trap 'echo \"@calls: 7\"; exit 0' INT; \
            echo 'Attaching 1 probe...'; echo one; echo 'Lost 5 events'; echo two; \
            while :; do sleep 0.05; done"),
        BPFTRACE_READY,
    )
    .expect("it attaches");
    let output = tracer.stop().expect("it stops");
    assert_eq!(output.calls, Some(7));
    assert_eq!(output.lines, 4, "Attaching, one, two, @calls");
    assert_eq!(output.lost, 5);
    assert_eq!(output.last.as_deref(), Some("@calls: 7"));
    assert_eq!(
        Bpftrace::Floor.seen(&output),
        Ok(7),
        "the floor's figure is its count"
    );
    assert_eq!(
        Bpftrace::Printed.seen(&output),
        Ok(9),
        "the printer's is its lines and the events it lost"
    );
    assert_eq!(
        output.cpu_us_per_line(),
        None,
        "4 lines are not a line per call"
    );
}

/// `mapsentry run` says it is capturing on stderr; a tracer that exits with an error when
/// stopped fails the measurement with what it said.
#[test]
fn readiness_on_stderr_and_a_failed_exit_is_an_error() {
    let tracer = Tracer::start(
        sh("echo 'mapsentry: capturing mmap and mmap2' >&2; \
            trap 'echo lost events >&2; exit 1' INT; \
            while :; do sleep 0.05; done"),
        MAPSENTRY_READY,
    )
    .expect("it is ready");
    let error = tracer.stop().expect_err("exit status 1");
    assert!(
        error.contains("exit status: 1") && error.contains("lost events"),
        "{error}"
    );
    assert_eq!(
        Bpftrace::EntryExit.seen(&TracerOutput::default()),
        Err("bpftrace-entry-exit printed no @calls count".to_owned())
    );
}

/// The CPU a tracer burns while the workload runs is its, from settling to being stopped: a
/// shell spinning through the quiet wait used most of that half second, one sleeping used next
/// to none (the wall-clock time is not its CPU).
#[test]
fn a_tracers_cpu_is_counted_from_settling_to_stopping() {
    let spinning = Tracer::start(
        sh("trap 'exit 0' INT; echo Attaching; while :; do :; done"),
        BPFTRACE_READY,
    )
    .expect("it attaches");
    let output = spinning.stop().expect("it stops");
    assert!(
        output.cpu_ns >= 0.2e9,
        "a shell spinning for the {QUIET:?} of quiet used {} ms",
        output.cpu_ns / 1e6
    );

    let sleeping = Tracer::start(
        sh("trap 'exit 0' INT; echo Attaching; while :; do sleep 0.1; done"),
        BPFTRACE_READY,
    )
    .expect("it attaches");
    let output = sleeping.stop().expect("it stops");
    assert!(
        output.cpu_ns <= 0.1e9,
        "a shell sleeping for the {QUIET:?} of quiet used {} ms",
        output.cpu_ns / 1e6
    );
}

/// CPU per line only where it printed a line per call.
#[test]
fn cpu_per_line_is_given_for_a_line_per_call() {
    let output = TracerOutput {
        lines: 2000,
        cpu_ns: 4e6,
        ..TracerOutput::default()
    };
    assert_eq!(output.cpu_us_per_line(), Some(2.0));
    let handful = TracerOutput {
        lines: 4,
        ..output.clone()
    };
    assert_eq!(handful.cpu_us_per_line(), None);
}
