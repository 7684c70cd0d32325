//! The stock kernels of the matrix, and fetching one into the cache through a private apt
//! configuration (its own sources.list, lists and cache; the machine's apt setup is untouched).

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::plan::Mode;

pub const DEFAULT_CACHE: &str = "/var/cache/mapsentry/kernels";

const ARCHIVE: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const META_PACKAGE: &str = "linux-image-cloud-amd64";

/// A kernel of the matrix and what it is expected to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    pub name: &'static str,
    /// The Debian kernel it boots, and its directory in the cache: entries of the matrix that
    /// boot the same kernel differently share it.
    release: &'static str,
    /// Lines of the private sources.list (`deb` is prepended).
    sources: &'static [(&'static str, &'static str)],
    /// Added to the kernel command line.
    pub boot_args: &'static str,
    /// Modes whose programs load and attach here (`auto` must pick the cheapest).
    pub modes: &'static [Mode],
    /// The modes the per-mode suites run in: all of `modes`, or those this boot is about.
    pub tested: &'static [Mode],
    /// Whether this boot runs ia32 calls (the tests expect the capture to see them, or the
    /// kernel to refuse them and tracepoint mode to use the per-syscall tracepoints).
    pub ia32: bool,
    /// What the feature probe must accept and refuse (`mode` or `mode@function`, comma-separated).
    pub probe_ok: &'static str,
    pub probe_refused: &'static str,
}

const ALL_MODES: &[Mode] = &[Mode::Kprobe, Mode::Fentry, Mode::Tracepoint];

pub const KERNELS: [Kernel; 3] = [
    Kernel {
        name: "6.1",
        release: "6.1",
        boot_args: "",
        sources: &[
            (ARCHIVE, "bookworm"),
            (ARCHIVE, "bookworm-updates"),
            (SECURITY, "bookworm-security"),
        ],
        modes: ALL_MODES,
        tested: ALL_MODES,
        ia32: true,
        // x86 BPF trampolines take at most six arguments before 6.6: do_mmap has nine.
        probe_ok: "fentry,kprobe,tracepoint,fentry@ksys_mmap_pgoff,kprobe@do_mmap",
        probe_refused: "fentry@do_mmap",
    },
    Kernel {
        name: "6.12",
        release: "6.12",
        boot_args: "",
        sources: &[(ARCHIVE, "bookworm-backports")],
        modes: ALL_MODES,
        tested: ALL_MODES,
        ia32: true,
        probe_ok: "fentry,kprobe,tracepoint,fentry@ksys_mmap_pgoff,fentry@do_mmap,kprobe@do_mmap",
        probe_refused: "",
    },
    // The same kernel with ia32 emulation off (6.7+): tracepoint mode must use the per-syscall
    // tracepoints and lose nothing; the other modes hook the same functions as with it on.
    Kernel {
        name: "6.12-no-ia32",
        release: "6.12",
        boot_args: "ia32_emulation=false",
        sources: &[(ARCHIVE, "bookworm-backports")],
        modes: ALL_MODES,
        tested: &[Mode::Tracepoint],
        ia32: false,
        probe_ok: "fentry,kprobe,tracepoint,fentry@ksys_mmap_pgoff,fentry@do_mmap,kprobe@do_mmap",
        probe_refused: "",
    },
];

impl Kernel {
    /// What `auto` must choose here: the cheapest of `modes`.
    pub fn auto_picks(self) -> Mode {
        Mode::CONCRETE
            .into_iter()
            .find(|mode| self.modes.contains(mode))
            .unwrap_or(Mode::Tracepoint)
    }

    pub fn named(name: &str) -> anyhow::Result<Self> {
        KERNELS
            .into_iter()
            .find(|k| k.name == name)
            .with_context(|| {
                let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
                format!(
                    "unknown kernel {name:?}: expected one of {}",
                    known.join(", ")
                )
            })
    }
}

/// The kernel's `vmlinuz` in the cache, fetched first if it is not there yet.
pub fn fetch(kernel: Kernel, cache: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache.join(kernel.release);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.is_file() {
        let package = fs::read_to_string(dir.join("package")).unwrap_or_default();
        eprintln!(
            "xtask vm-test: kernel {} from the cache ({})",
            kernel.release,
            package.trim()
        );
        return Ok(vmlinuz);
    }
    eprintln!(
        "xtask vm-test: fetching kernel {} into {}",
        kernel.release,
        dir.display()
    );
    let apt = PrivateApt::new(kernel)?;
    apt.run("apt-get", &["update", "-qq"])?;
    let image = apt.image_package()?;
    apt.run("apt-get", &["download", "-qq", &image])?;
    let deb = only_deb(&apt.dir)?;
    let unpacked = apt.dir.join("unpacked");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let boot = unpacked.join("boot");
    let found = fs::read_dir(&boot)
        .with_context(|| format!("{} has no /boot", deb.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{} has no /boot/vmlinuz-*", deb.display()))?;

    // Into the cache atomically: a half-written vmlinuz must never look fetched.
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let partial = dir.join("vmlinuz.partial");
    fs::copy(&found, &partial).with_context(|| format!("copying {}", found.display()))?;
    fs::write(
        dir.join("package"),
        format!(
            "{}\n",
            deb.file_name().unwrap_or_default().to_string_lossy()
        ),
    )?;
    fs::rename(&partial, &vmlinuz)?;
    Ok(vmlinuz)
}

/// A throw-away apt configuration: own sources.list, lists, cache and empty preferences, and
/// no dpkg status (nothing is installed, only downloaded).
struct PrivateApt {
    dir: PathBuf,
    options: Vec<String>,
}

impl PrivateApt {
    fn new(kernel: Kernel) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "mapsentry-apt-{}-{}",
            kernel.release,
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let mut sources = String::new();
        for (uri, suite) in kernel.sources {
            let _ = writeln!(sources, "deb [signed-by={KEYRING}] {uri} {suite} main");
        }
        fs::write(dir.join("sources.list"), sources)?;
        let path = |p: &str| dir.join(p).display().to_string();
        let options = [
            ("Dir::Etc::SourceList", path("sources.list")),
            ("Dir::Etc::SourceParts", path("sources.list.d")),
            ("Dir::Etc::Preferences", path("preferences")),
            ("Dir::Etc::PreferencesParts", path("preferences.d")),
            ("Dir::State::Lists", path("lists")),
            ("Dir::Cache", path("cache")),
            ("Dir::State::Status", "/dev/null".to_owned()),
            // The download goes to our own directory, which the _apt user cannot write.
            ("APT::Sandbox::User", "root".to_owned()),
        ]
        .into_iter()
        .flat_map(|(key, value)| ["-o".to_owned(), format!("{key}={value}")])
        .collect();
        Ok(Self { dir, options })
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.args(&self.options).current_dir(&self.dir);
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        run(self.command(program).args(args))
    }

    /// The versioned image package the cloud meta-package depends on.
    fn image_package(&self) -> anyhow::Result<String> {
        let output = self
            .command("apt-cache")
            .args(["show", "--no-all-versions", META_PACKAGE])
            .output()
            .context("running apt-cache")?;
        if !output.status.success() {
            bail!(
                "apt-cache show {META_PACKAGE} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        image_dependency(&String::from_utf8_lossy(&output.stdout))
            .with_context(|| format!("{META_PACKAGE} depends on no linux-image-* package"))
    }
}

impl Drop for PrivateApt {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `linux-image-6.1.0-56-cloud-amd64` out of the meta-package's `Depends:` line.
fn image_dependency(show: &str) -> Option<String> {
    let depends = show.lines().find_map(|l| l.strip_prefix("Depends:"))?;
    depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or_default())
        .find(|name| name.starts_with("linux-image-"))
        .map(str::to_owned)
}

fn only_deb(dir: &Path) -> anyhow::Result<PathBuf> {
    fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", dir.display()))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
