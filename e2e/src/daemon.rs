//! A long-running program of a test (collector, agent, tail): its stdout and stderr lines are kept
//! (for assertions and for the failure message) and can be waited for; it gets SIGTERM when
//! stopped or dropped.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

/// Lines a program printed on one stream, shared with the thread that reads them.
#[derive(Debug, Default)]
struct Lines {
    lines: Mutex<(Vec<String>, bool)>,
    grew: Condvar,
}

impl Lines {
    fn follow(self: &Arc<Self>, from: impl Read + Send + 'static) -> thread::JoinHandle<()> {
        let lines = Arc::clone(self);
        thread::spawn(move || {
            for line in BufReader::new(from).lines().map_while(Result::ok) {
                let mut held = lines.lines.lock().unwrap_or_else(PoisonError::into_inner);
                held.0.push(line);
                lines.grew.notify_all();
            }
            let mut held = lines.lines.lock().unwrap_or_else(PoisonError::into_inner);
            held.1 = true;
            lines.grew.notify_all();
        })
    }

    fn snapshot(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// The first line from index `from` on that satisfies `done`, with its index.
    fn wait(
        &self,
        from: usize,
        timeout: Duration,
        done: &dyn Fn(&str) -> bool,
    ) -> Option<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let mut held = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let mut checked = from;
        loop {
            while checked < held.0.len() {
                if done(&held.0[checked]) {
                    return Some((checked, held.0[checked].clone()));
                }
                checked += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if held.1 || left.is_zero() {
                return None;
            }
            held = self
                .grew
                .wait_timeout(held, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A program started by a test.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Child,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// Which output stream to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Daemon {
    /// Start `command` (its stdout and stderr are taken over); `name` names it in messages.
    ///
    /// # Panics
    /// When it cannot be started.
    #[must_use]
    pub fn start(name: &str, command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({command:?}): {e}"));
        let stdout = Arc::<Lines>::default();
        let stderr = Arc::<Lines>::default();
        let readers = vec![
            stdout.follow(child.stdout.take().expect("piped stdout")),
            stderr.follow(child.stderr.take().expect("piped stderr")),
        ];
        Self {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// The name it was started with.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn lines(&self, stream: Stream) -> &Lines {
        match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        }
    }

    /// Every line printed on `stream` so far.
    #[must_use]
    pub fn output(&self, stream: Stream) -> Vec<String> {
        self.lines(stream).snapshot()
    }

    /// How many lines `stream` has so far (a starting point for [`Daemon::wait_for`]).
    #[must_use]
    pub fn mark(&self, stream: Stream) -> usize {
        self.lines(stream).snapshot().len()
    }

    /// The first line on `stream`, from line index `from` on, that satisfies `done`, with its
    /// index; `None` after `timeout` or when the stream ended.
    pub fn find(
        &self,
        stream: Stream,
        from: usize,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Option<(usize, String)> {
        self.lines(stream).wait(from, timeout, &done)
    }

    /// As [`Daemon::find`], panicking (with both streams' last lines) when nothing comes.
    ///
    /// # Panics
    /// When no such line arrives within `timeout`.
    pub fn wait_for(
        &mut self,
        what: &str,
        stream: Stream,
        from: usize,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> (usize, String) {
        if let Some(found) = self.find(stream, from, timeout, done) {
            return found;
        }
        let state = match self.child.try_wait() {
            Ok(Some(status)) => format!("it exited: {status}"),
            _ => "it still runs".to_owned(),
        };
        panic!(
            "waiting {timeout:?} for {what} from {} ({state})\n{}",
            self.name,
            self.tail(40)
        );
    }

    /// The last `n` lines of each stream, for failure messages.
    #[must_use]
    pub fn tail(&self, n: usize) -> String {
        let mut out = String::new();
        for (label, stream) in [("stdout", Stream::Stdout), ("stderr", Stream::Stderr)] {
            let lines = self.output(stream);
            let _ = writeln!(
                out,
                "--- {} {label} (last {n} of {}):",
                self.name,
                lines.len()
            );
            for line in &lines[lines.len().saturating_sub(n)..] {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then wait (SIGKILL after `grace`); returns how it ended and its whole output
    /// (stdout, stderr), read to the end.
    ///
    /// # Panics
    /// When the process cannot be signalled or waited for.
    #[must_use]
    pub fn stop(mut self, grace: Duration) -> (ExitStatus, Vec<String>, Vec<String>) {
        let status = self.terminate(grace);
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        (
            status,
            self.output(Stream::Stdout),
            self.output(Stream::Stderr),
        )
    }

    fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    return self
                        .child
                        .wait()
                        .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.name));
                }
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.readers.is_empty() {
            self.terminate(Duration::from_secs(5));
        }
    }
}
