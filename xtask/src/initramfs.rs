//! The VM's root file system: busybox, the test binaries at their host paths, and an /init
//! script that runs the plan and reports each suite on the console; as a gzipped newc cpio.

use std::{
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::{
    binaries::Built,
    console::{BOOTED, DONE, RESULT},
    plan::Plan,
};

/// Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

pub fn build(plan: &Plan, built: &Built, nonce: &str, out: &Path) -> anyhow::Result<()> {
    let mut archive = Cpio::default();
    for dir in ["/bin", "/dev", "/proc", "/sys", "/tmp", "/run"] {
        archive.dir(dir);
    }
    archive.char_device("/dev/console", 5, 1);
    archive.file("/bin/busybox", &read_static(Path::new(BUSYBOX))?, 0o755);
    archive.symlink("/bin/sh", "busybox");
    archive.file("/init", init_script(plan, nonce).as_bytes(), 0o755);
    let mut binaries: Vec<&PathBuf> = plan.runs.iter().map(|r| &r.binary).collect();
    binaries.extend(&built.helpers);
    binaries.sort();
    binaries.dedup();
    for binary in binaries {
        let path = binary.to_str().with_context(|| {
            format!(
                "{} is not UTF-8: cannot put it in the initramfs",
                binary.display()
            )
        })?;
        archive.file(
            path,
            &stripped(binary, &out.with_extension("strip"))?,
            0o755,
        );
    }
    for program in &plan.host_programs {
        add_host_program(&mut archive, program)?;
    }
    for file in &plan.host_files {
        let path = file
            .to_str()
            .with_context(|| format!("{} is not UTF-8", file.display()))?;
        let contents = std::fs::read(file).with_context(|| format!("reading {path}"))?;
        archive.file(path, &contents, 0o644);
    }
    gzip(&archive.finish(), out)
}

/// `program` under /bin (the VM's PATH), and every shared library it loads at its host path,
/// where the dynamic loader looks for it.
fn add_host_program(archive: &mut Cpio, program: &Path) -> anyhow::Result<()> {
    let name = program
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: no file name", program.display()))?;
    let contents = std::fs::read(program).with_context(|| {
        format!(
            "reading {}: install it (scripts/setup.sh does)",
            program.display()
        )
    })?;
    archive.file(&format!("/bin/{name}"), &contents, 0o755);
    let output = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd (libc-bin)")?;
    if !output.status.success() {
        bail!(
            "ldd {}: {}",
            program.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    for library in shared_libraries(&String::from_utf8_lossy(&output.stdout))
        .with_context(|| format!("the libraries of {}", program.display()))?
    {
        let contents = std::fs::read(library).with_context(|| format!("reading {library}"))?;
        archive.file(library, &contents, 0o755);
    }
    Ok(())
}

/// The files `ldd` lists: each line's absolute path (`libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1
/// (0x...)`, or the loader's `/lib64/ld-linux-x86-64.so.2 (0x...)`); the vDSO has none. A
/// library it did not find is an error.
fn shared_libraries(ldd: &str) -> anyhow::Result<Vec<&str>> {
    let mut libraries = Vec::new();
    for line in ldd.lines() {
        if line.contains("not found") {
            bail!("ldd: {}", line.trim());
        }
        if let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) {
            libraries.push(path);
        }
    }
    Ok(libraries)
}

/// The script the kernel runs as PID 1: mount what the tests need, run each planned suite and
/// print its marker, power off. `set -e` is deliberately absent: a failing suite must not stop
/// the others, and the markers say what happened.
///
/// Tests run one at a time: a kprobe program is skipped (counted only in the program's
/// `recursion_misses`) whenever any BPF program or BPF map syscall is active on the same CPU,
/// so another test loading its capture would make the kprobe-mode counts inexact.
pub fn init_script(plan: &Plan, nonce: &str) -> String {
    let mut script = format!(
        r#"#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/tmp RUST_BACKTRACE=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# A checkout under /tmp has its test binaries there (at their host paths): keep them visible.
# The initramfs root is writable memory already; a fresh tmpfs is only for an empty /tmp.
[ -z "$(ls -A /tmp)" ] && mount -t tmpfs tmpfs /tmp
mkdir -p /dev/shm
mount -t tmpfs shm /dev/shm
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# Loopback, for what talks gRPC on 127.0.0.1 (the benchmark's agent, collector and subscriber).
ip link set lo up
read up rest < /proc/uptime
echo "{BOOTED} nonce={nonce} kernel=$(uname -r) uptime=$up lsm=$(cat /sys/kernel/security/lsm)"
run() {{
  suite=$1 mode=$2
  shift 2
  echo "=== $suite in mode $mode"
  read start rest < /proc/uptime
  "$@"
  rc=$?
  read end rest < /proc/uptime
  echo "{RESULT} nonce={nonce} suite=$suite mode=$mode rc=$rc start=$start end=$end"
}}
"#
    );
    for run in &plan.runs {
        let mut env = String::new();
        for (key, value) in &run.env {
            let _ = write!(env, "{key}={} ", shell_quote(value));
        }
        let mut skip = String::new();
        for (test, why) in &run.skip {
            let _ = writeln!(
                script,
                "echo {}",
                shell_quote(&format!("not run in the VM: {}::{test}: {why}", run.suite))
            );
            let _ = write!(skip, " --skip {test}");
        }
        let _ = writeln!(
            script,
            "run {} {} env {env}{} --test-threads=1 --show-output{skip}",
            run.suite,
            run.label,
            run.binary.display()
        );
    }
    for skip in &plan.skipped {
        let _ = writeln!(
            script,
            "echo {}",
            shell_quote(&format!(
                "not run in the VM: {}: {}",
                skip.suite, skip.reason
            ))
        );
    }
    let _ = writeln!(script, "echo \"{DONE} nonce={nonce}\"\npoweroff -f");
    script
}

/// `text` as one single-quoted shell word (a `'` inside becomes `'\''`).
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn read_static(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "reading {}: install Debian's busybox-static (scripts/setup.sh does)",
            path.display()
        )
    })
}

/// The binary without its debug info (a tenth of the size: a smaller initrd boots faster).
/// `scratch`: where strip may write (it seeks, so not to a pipe).
fn stripped(binary: &Path, scratch: &Path) -> anyhow::Result<Vec<u8>> {
    let output = Command::new("strip")
        .args(["--strip-debug", "-o"])
        .arg(scratch)
        .arg(binary)
        .output()
        .with_context(|| format!("running strip on {} (binutils)", binary.display()))?;
    if !output.status.success() {
        bail!(
            "strip {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stripped = std::fs::read(scratch).with_context(|| format!("reading {}", scratch.display()));
    let _ = std::fs::remove_file(scratch);
    stripped
}

fn gzip(data: &[u8], out: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut child = Command::new("gzip")
        .arg("-1")
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("running gzip")?;
    child
        .stdin
        .take()
        .context("gzip's stdin")?
        .write_all(data)
        .context("writing to gzip")?;
    let status = child.wait().context("waiting for gzip")?;
    if !status.success() {
        bail!("gzip failed: {status}");
    }
    Ok(())
}

/// A newc ("070701") cpio archive, the format the kernel unpacks as an initramfs. Parent
/// directories are added as needed, each once.
#[derive(Debug, Default)]
pub struct Cpio {
    data: Vec<u8>,
    dirs: std::collections::BTreeSet<String>,
    next_inode: u32,
}

impl Cpio {
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_end_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        self.parents(path);
        self.dirs.insert(path.to_owned());
        self.entry(path, 0o040_755, 0, &[]);
    }

    pub fn file(&mut self, path: &str, contents: &[u8], permissions: u32) {
        self.parents(path);
        self.entry(path, 0o100_000 | permissions, 0, contents);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entry(path, 0o120_777, 0, target.as_bytes());
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.parents(path);
        self.entry(path, 0o020_600, (major << 8) | minor, &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, 0, 0);
        self.data
    }

    fn parents(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: u32, contents: &[u8]) {
        self.next_inode += 1;
        let name = path.trim_start_matches('/');
        self.header(name, self.next_inode, mode, rdev, contents.len());
        self.data.extend_from_slice(contents);
        self.pad();
    }

    fn header(&mut self, name: &str, inode: u32, mode: u32, rdev: u32, size: usize) {
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let fields = [
            inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(size).expect("initramfs files are under 4 GiB"),
            0, // dev major
            0, // dev minor
            rdev >> 8,
            rdev & 0xff,
            u32::try_from(name.len() + 1).expect("short names"),
            0, // check
        ];
        self.data.extend_from_slice(b"070701");
        for field in fields {
            self.data
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }
}

#[cfg(test)]
mod tests;
