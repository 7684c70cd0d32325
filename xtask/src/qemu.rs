//! Booting the kernel and initramfs in qemu (software emulation: KVM is not assumed) and
//! collecting the serial console until the VM powers off or the time is up.

use std::{
    io::{BufRead, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context;

/// `-cx16`: without it Debian's 6.12 cloud kernel crashes early about one boot in three under
/// TCG. `panic=-1` with `-no-reboot` turns a panic into qemu exiting. `lsm=` adds `bpf` to the
/// LSMs Debian enables, for the enforcement tests.
const KERNEL_ARGS: &str =
    "console=ttyS0 panic=-1 quiet lsm=lockdown,capability,landlock,yama,apparmor,bpf";

#[derive(Debug)]
pub struct Boot {
    pub console: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

/// Boot `vmlinuz` with `initrd`, `boot_args` added to the kernel command line.
pub fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    boot_args: &str,
    timeout: Duration,
    log: Option<&Path>,
) -> anyhow::Result<Boot> {
    let mut log = log
        .map(|path| {
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))
        })
        .transpose()?;
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "max,-cx16",
            "-m",
            "1G",
            "-smp",
            "2",
        ])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("{KERNEL_ARGS} {boot_args}").trim_end())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (Debian package qemu-system-x86)")?;

    // A reader thread: lines arrive on a bounded channel, so the wait below can time out.
    let stdout = child.stdout.take().context("qemu's stdout")?;
    let (lines, arriving) = mpsc::sync_channel::<String>(1024);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            if lines.send(text).is_err() {
                break;
            }
        }
    });

    let mut console = String::new();
    let mut timed_out = false;
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        match arriving.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                println!("vm| {line}");
                if let Some(log) = log.as_mut() {
                    let _ = writeln!(log, "{line}");
                }
                console.push_str(&line);
                console.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if left.is_zero() => {
                timed_out = true;
                eprintln!("xtask vm-test: no power-off after {timeout:?}: stopping qemu");
                let _ = child.kill();
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    let _ = child.wait();
    drop(arriving); // a reader blocked on a full channel ends now
    let _ = reader.join();
    Ok(Boot {
        console,
        elapsed: started.elapsed(),
        timed_out,
    })
}
