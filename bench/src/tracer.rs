//! A tracer the benchmark starts as a user does (`mapsentry run`, bpftrace), every line it prints
//! read by a thread as a consumer reads every event, and its CPU time from attaching to being
//! stopped.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// How long a tracer may take to load its programs: bpftrace's LLVM under software emulation is
/// slow.
pub const ATTACH_TIMEOUT: Duration = Duration::from_mins(5);
/// After a tracer says it is attached, before the workload starts.
pub const SETTLE: Duration = Duration::from_secs(1);
/// How long a stopped tracer may take to exit (bpftrace prints its maps and detaches).
pub const EXIT_TIMEOUT: Duration = Duration::from_mins(1);
/// How long a tracer's output must be still before it is stopped.
pub const QUIET: Duration = Duration::from_millis(500);

/// What `mapsentry run` says on stderr once its programs are attached.
pub const MAPSENTRY_READY: Ready = Ready::Stderr("mapsentry: capturing");

/// Where a tracer says it has attached its programs: a line containing the marker.
#[derive(Debug, Clone, Copy)]
pub enum Ready {
    Stdout(&'static str),
    Stderr(&'static str),
}

/// What a stopped tracer wrote on stdout, and the CPU it used.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TracerOutput {
    /// Lines, bpftrace's notices of lost events not counted.
    pub lines: u64,
    /// bpftrace's `@calls: N` at exit.
    pub calls: Option<u64>,
    /// Events bpftrace said it dropped (`Lost N events`: its output buffer was full).
    pub lost: u64,
    /// The last line, a notice of lost events not counted (`mapsentry run`'s totals).
    pub last: Option<String>,
    /// Its CPU time (all threads, user and system) from [`SETTLE`] after attaching to the moment
    /// it was interrupted, in ns; in clock ticks of 10 ms.
    pub cpu_ns: f64,
}

impl TracerOutput {
    /// CPU microseconds per line read, where it printed a line per call (1,000 lines or more):
    /// the per-line cost of a tracer that prints a handful is its idle cost.
    #[must_use]
    #[expect(
        clippy::cast_precision_loss,
        reason = "line counts stay far below 2^52"
    )]
    pub fn cpu_us_per_line(&self) -> Option<f64> {
        (self.lines >= 1000).then(|| self.cpu_ns / self.lines as f64 / 1000.0)
    }
}

/// A tracer process the benchmark started, its stdout read to the end by a thread, its stderr
/// kept for errors.
#[derive(Debug)]
pub struct Tracer {
    child: Child,
    /// Lines read so far.
    read: Arc<AtomicU64>,
    /// Its CPU time once settled, in ns.
    cpu_at_start: f64,
    stdout: JoinHandle<Result<TracerOutput, String>>,
    stderr: JoinHandle<String>,
}

impl Tracer {
    /// `command` running, once it has said `ready`, and [`SETTLE`] later. A tracer that exits
    /// first is an error at once, with what it said.
    pub fn start(mut command: Command, ready: Ready) -> Result<Self, String> {
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {program}: {e}"))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            unreachable!("both piped above");
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let ready_on_err = ready_tx.clone();
        let read = Arc::new(AtomicU64::new(0));
        let read_by_thread = Arc::clone(&read);
        let stdout = thread::spawn(move || {
            let mut output = TracerOutput::default();
            for line in BufReader::new(stdout).lines() {
                let line = line.map_err(|e| format!("reading its output: {e}"))?;
                if let Ready::Stdout(marker) = ready
                    && line.contains(marker)
                {
                    let _ = ready_tx.send(());
                }
                let number = |text: &str| {
                    text.trim()
                        .parse::<u64>()
                        .map_err(|e| format!("it printed {line:?}: {e}"))
                };
                if let Some(count) = line.strip_prefix("@calls: ") {
                    output.calls = Some(number(count)?);
                }
                if let Some(lost) = line
                    .strip_prefix("Lost ")
                    .and_then(|rest| rest.strip_suffix(" events"))
                {
                    output.lost += number(lost)?;
                } else {
                    output.lines += 1;
                    output.last = Some(line);
                }
                read_by_thread.fetch_add(1, Ordering::Relaxed);
            }
            Ok(output)
        });
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ready::Stderr(marker) = ready
                    && line.contains(marker)
                {
                    let _ = ready_on_err.send(());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let mut running = Self {
            child,
            read,
            cpu_at_start: 0.0,
            stdout,
            stderr,
        };
        match ready_rx.recv_timeout(ATTACH_TIMEOUT) {
            Ok(()) => {
                thread::sleep(SETTLE);
                match cpu_ns(running.child.id()) {
                    Ok(cpu) => {
                        running.cpu_at_start = cpu;
                        Ok(running)
                    }
                    Err(e) => {
                        let said = running.kill();
                        Err(format!("{e}; it said: {said}"))
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let said = running.kill();
                Err(format!(
                    "{program} did not attach within {ATTACH_TIMEOUT:?}; it said: {said}"
                ))
            }
            Err(RecvTimeoutError::Disconnected) => {
                let said = running.kill();
                Err(format!(
                    "{program} exited before attaching; it said: {said}"
                ))
            }
        }
    }

    /// Once its output has been quiet for [`QUIET`] (it has written what it had, as a consumer
    /// waits for the last events), interrupt it as a user stops it, and read what it wrote. An
    /// exit status other than success is an error, with what it said.
    pub fn stop(mut self) -> Result<TracerOutput, String> {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        let mut before = self.read.load(Ordering::Relaxed);
        loop {
            thread::sleep(QUIET);
            let now = self.read.load(Ordering::Relaxed);
            if now == before || Instant::now() >= deadline {
                break;
            }
            before = now;
        }
        let cpu_ns = cpu_ns(self.child.id())? - self.cpu_at_start;
        signal(&self.child, libc::SIGINT).map_err(|e| format!("interrupting it: {e}"))?;
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if Instant::now() >= deadline {
                let waiting = waiting_in(self.child.id());
                let said = self.kill();
                return Err(format!(
                    "it did not exit within {EXIT_TIMEOUT:?} of SIGINT (its threads waiting in: \
                     {waiting}); it said: {said}"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        };
        let output = self
            .stdout
            .join()
            .map_err(|_| "its output's reader panicked".to_owned())?;
        let said = self.stderr.join().unwrap_or_default();
        if !status.success() {
            return Err(format!("it exited with {status}; it said: {}", said.trim()));
        }
        output
            .map(|output| TracerOutput { cpu_ns, ..output })
            .map_err(|e| format!("{e}; it said: {}", said.trim()))
    }

    /// Kill it and return what it said on stderr.
    #[must_use = "what it said, for an error"]
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.stdout.join();
        self.stderr.join().unwrap_or_default().trim().to_owned()
    }
}

/// `signal` to `child`, which has not been waited for (SIGINT stops a tracer as a user stops it;
/// the pipeline's daemons get SIGTERM, as a service manager sends).
pub(crate) fn signal(child: &Child, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(child.id()).map_err(std::io::Error::other)?;
    // SAFETY: signals our own child, not yet waited for: its pid is still ours.
    #[expect(unsafe_code, reason = "kill(2) of our own child")]
    let sent = unsafe { libc::kill(pid, signal) };
    if sent == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Where each thread of process `pid` waits in the kernel (/proc/PID/task/TID/wchan), for a
/// tracer that does not exit: what it was stuck on, in the error.
fn waiting_in(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "its tasks unreadable".to_owned();
    };
    let mut waits: Vec<String> = tasks
        .filter_map(Result::ok)
        .map(|task| {
            let wchan = std::fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
            format!("{} {}", task.file_name().to_string_lossy(), wchan.trim())
        })
        .collect();
    waits.sort();
    waits.join(", ")
}

/// The CPU time process `pid` has used (all threads, user and system), in ns: `utime` and
/// `stime` of /proc/PID/stat, in clock ticks of 10 ms (`USER_HZ` is 100 on Linux).
pub fn cpu_ns(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    parse_cpu_ns(&stat).ok_or_else(|| format!("{path}: no utime and stime in {stat:?}"))
}

/// utime + stime of a /proc/PID/stat line, in ns. The fields are counted after the command
/// name's closing parenthesis, which the name itself may contain.
#[expect(
    clippy::cast_precision_loss,
    reason = "clock ticks of a benchmark's tracer stay far below 2^52"
)]
fn parse_cpu_ns(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, utime field 14, stime field 15.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 * 10_000_000.0)
}

#[cfg(test)]
mod tests;
