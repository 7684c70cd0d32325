//! The VM's side of the conversation: marker lines the init script prints on the serial
//! console, and reading them back.
//!
//! Each marker carries a per-run nonce, so nothing else on the console (kernel messages, test
//! output, an earlier run's log) can pass for a result; a marker is found anywhere in a line,
//! because kernel messages can land in front of it. `DONE` says the script reached its end:
//! a VM that crashed or hung before it counts as failed, whatever it printed until then.

use std::{fmt::Write as _, time::Duration};

use crate::{plan::Plan, qemu::Boot};

pub const BOOTED: &str = "MAPSENTRY-VM-BOOTED";
pub const RESULT: &str = "MAPSENTRY-VM-RESULT";
pub const DONE: &str = "MAPSENTRY-VM-DONE";

/// A fresh token for one VM run.
pub fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:x}{nanos:08x}", std::process::id())
}

/// One suite's outcome as the VM reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct SuiteResult {
    pub suite: String,
    pub mode: String,
    pub rc: i32,
    /// Seconds the suite took (VM uptime at its end minus at its start).
    pub secs: f64,
}

#[derive(Debug, Default, PartialEq)]
pub struct Report {
    /// `uname -r` in the VM and its uptime when /init started, once booted.
    pub booted: Option<(String, f64)>,
    /// The active LSMs (`bpf` among them is what enforcement's Deny will need).
    pub lsm: String,
    pub results: Vec<SuiteResult>,
    pub done: bool,
}

impl Report {
    pub fn parse(console: &str, nonce: &str) -> Self {
        let mut report = Self::default();
        for line in console.lines() {
            if let Some(fields) = marker(line, BOOTED, nonce) {
                report.booted = Some((
                    get(&fields, "kernel").unwrap_or("?").to_owned(),
                    number(&fields, "uptime").unwrap_or(0.0),
                ));
                get(&fields, "lsm")
                    .unwrap_or_default()
                    .clone_into(&mut report.lsm);
            } else if let Some(fields) = marker(line, RESULT, nonce) {
                let (Some(suite), Some(mode), Some(rc)) = (
                    get(&fields, "suite"),
                    get(&fields, "mode"),
                    get(&fields, "rc").and_then(|rc| rc.parse().ok()),
                ) else {
                    continue;
                };
                let secs = match (number(&fields, "start"), number(&fields, "end")) {
                    (Some(start), Some(end)) => end - start,
                    _ => 0.0,
                };
                report.results.push(SuiteResult {
                    suite: suite.to_owned(),
                    mode: mode.to_owned(),
                    rc,
                    secs,
                });
            } else if marker(line, DONE, nonce).is_some() {
                report.done = true;
            }
        }
        report
    }

    /// Whether BPF LSM is among the VM's active LSMs.
    pub fn bpf_lsm(&self) -> bool {
        self.lsm.split(',').any(|lsm| lsm == "bpf")
    }

    /// Whether every planned run reported `rc=0`, the script finished, and, where the plan needs
    /// it, the kernel ran BPF LSM.
    pub fn passed(&self, plan: &Plan) -> bool {
        self.done
            && (!plan.requires_bpf_lsm || self.bpf_lsm())
            && plan.runs.iter().all(|run| {
                self.result(&run.suite, &run.label)
                    .is_some_and(|r| r.rc == 0)
            })
    }

    fn result(&self, suite: &str, mode: &str) -> Option<&SuiteResult> {
        self.results
            .iter()
            .find(|r| r.suite == suite && r.mode == mode)
    }

    /// The per-suite table, timings and verdict, as printed at the end of a run.
    pub fn summary(&self, plan: &Plan, kernel: &str, boot: &Boot, build: Duration) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "xtask vm-test: kernel {kernel} results:");
        for run in &plan.runs {
            let status = match self.result(&run.suite, &run.label) {
                Some(r) if r.rc == 0 => format!("ok      {:6.1}s", r.secs),
                Some(r) => format!("FAILED  {:6.1}s (exit {})", r.secs, r.rc),
                None => "MISSING (the VM never reported it)".to_owned(),
            };
            let _ = writeln!(out, "  {:<12} {:<12} {status}", run.suite, run.label);
        }
        for skip in &plan.skipped {
            let _ = writeln!(
                out,
                "  {:<12} {:<12} skipped: {}",
                skip.suite, "-", skip.reason
            );
        }
        let booted = match &self.booted {
            Some((release, uptime)) => format!(
                "{release}, /init after {uptime:.1}s of uptime, LSMs {}",
                self.lsm
            ),
            None => "no sign of /init".to_owned(),
        };
        let _ = writeln!(
            out,
            "  build {:.0}s; VM {:.1}s from qemu start to power-off ({booted}){}",
            build.as_secs_f64(),
            boot.elapsed.as_secs_f64(),
            if boot.timed_out { "; TIMED OUT" } else { "" },
        );
        if !self.done {
            let _ = writeln!(
                out,
                "  the init script did not reach its end (crash, panic or timeout: see the console above)"
            );
        }
        if plan.requires_bpf_lsm && self.booted.is_some() && !self.bpf_lsm() {
            let _ = writeln!(
                out,
                "  the kernel was booted with lsm=...,bpf but its active LSMs are {:?}: Deny cannot be tested",
                self.lsm
            );
        }
        let verdict = if self.passed(plan) {
            "PASSED"
        } else {
            "FAILED"
        };
        let _ = write!(out, "xtask vm-test: kernel {kernel}: {verdict}");
        out
    }
}

/// The `key=value` fields after `tag` in `line`, if it is a marker of this run.
fn marker<'a>(line: &'a str, tag: &str, nonce: &str) -> Option<Vec<(&'a str, &'a str)>> {
    let (_, rest) = line.split_once(&format!("{tag} "))?;
    let fields: Vec<(&str, &str)> = rest
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
        .collect();
    (get(&fields, "nonce") == Some(nonce)).then_some(fields)
}

fn get<'a>(fields: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn number(fields: &[(&str, &str)], key: &str) -> Option<f64> {
    get(fields, key)?.parse().ok()
}

#[cfg(test)]
mod tests;
