//! Test fixtures on real cgroups and processes (tests only).

use std::{
    io::Write,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::cgroup_index::find_cgroup2_root;

/// A private subtree of the real cgroup2 hierarchy, removed (deepest first) when dropped, after
/// its processes are moved back to the root cgroup.
pub struct TestTree {
    pub root: PathBuf,
    /// Relative to the root, e.g. `/mapsentry-test-123-watch`.
    pub top: String,
}

impl TestTree {
    pub fn new(name: &str) -> Self {
        let root =
            find_cgroup2_root().unwrap_or_else(|e| panic!("these tests need a cgroup2 mount: {e}"));
        let top = format!("/mapsentry-test-{}-{name}", std::process::id());
        let tree = Self { root, top };
        tree.remove_all();
        std::fs::create_dir(tree.abs(&tree.top)).unwrap_or_else(|e| {
            panic!(
                "creating {} (tests need root): {e}",
                tree.abs(&tree.top).display()
            )
        });
        tree
    }

    pub fn abs(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// Make `top/sub` (with parents); returns its path relative to the root and its inode.
    pub fn mkdir(&self, sub: &str) -> (String, u64) {
        let rel = format!("{}/{sub}", self.top);
        let abs = self.abs(&rel);
        std::fs::create_dir_all(&abs).unwrap_or_else(|e| panic!("mkdir {}: {e}", abs.display()));
        let ino = std::fs::metadata(&abs)
            .unwrap_or_else(|e| panic!("stat {}: {e}", abs.display()))
            .ino();
        (rel, ino)
    }

    pub fn move_into(&self, rel: &str, pid: u32) {
        let procs = self.abs(rel).join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("writing {pid} to {}: {e}", procs.display()));
    }

    fn remove_all(&self) {
        let top = self.abs(&self.top);
        if !top.exists() {
            return;
        }
        let mut dirs = Vec::new();
        collect_dirs(&top, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines() {
                    let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

impl Drop for TestTree {
    fn drop(&mut self) {
        self.remove_all();
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&child.path(), out);
            }
        }
    }
}

/// A process that waits for one line on stdin, then execs `cat` (whose loader maps memory).
pub struct Waiter {
    child: Child,
}

impl Waiter {
    pub fn spawn() -> Self {
        let child = Command::new("sh")
            .args(["-c", "read line; exec cat /etc/hostname"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning sh: {e}"));
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn release_and_wait(mut self) {
        let mut stdin = self.child.stdin.take().expect("stdin is piped");
        stdin
            .write_all(b"go\n")
            .unwrap_or_else(|e| panic!("releasing the waiter: {e}"));
        drop(stdin);
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for the waiter: {e}"));
        assert!(status.success(), "waiter exited with {status}");
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
