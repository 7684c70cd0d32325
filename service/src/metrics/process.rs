//! What every Prometheus client library exports besides a program's own metrics: the standard
//! `process_*` metrics of this process (read from `/proc/self` at scrape time) and
//! `mapsentry_build_info`, one registry for both roles ([`standard`]).

use std::fs;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::Labels;

/// The standard metrics of this process and of this build, for a role (`agent`, `collector`,
/// `run`); encode it with the role's own registries ([`super::encode`]).
#[must_use]
pub fn standard(role: &'static str) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Standard { role }));
    registry
}

#[derive(Debug)]
struct Standard {
    role: &'static str,
}

/// This process as `/proc/self` shows it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, seconds.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// Seconds since the Unix epoch.
    pub start_time_seconds: f64,
    pub open_fds: u64,
    /// The soft limit on open files; None when unlimited.
    pub max_fds: Option<u64>,
    pub threads: u64,
}

impl ProcessStats {
    /// Read this process's figures; None when `/proc` is not readable (never on Linux with procfs).
    #[must_use]
    pub fn read() -> Option<Self> {
        let stat = fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<u64>()
            .ok()?;
        let mut stats = parse_stat(&stat, boot_time, clock_ticks(), page_size())?;
        stats.open_fds = fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        stats.max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        Some(stats)
    }
}

fn clock_ticks() -> u64 {
    rustix::param::clock_ticks_per_second()
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// The fields of `/proc/self/stat` (proc(5)): the command name is in parentheses and may hold
/// spaces and parentheses itself, so fields are counted after its last `)`.
#[expect(
    clippy::cast_precision_loss,
    reason = "CPU ticks and seconds since the epoch stay far below 2^52"
)]
fn parse_stat(stat: &str, boot_time: u64, ticks: u64, page: u64) -> Option<ProcessStats> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let ticks = ticks.max(1) as f64;
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        threads: field(20)?,
        start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
        open_fds: 0,
        max_fds: None,
    })
}

impl Collector for Standard {
    #[expect(
        clippy::cast_precision_loss,
        reason = "byte and descriptor counts are exposed as floats, exact below 2^52"
    )]
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info = Labels(vec![
            ("version", env!("CARGO_PKG_VERSION").into()),
            ("role", self.role.into()),
        ]);
        let mut metric = encoder.encode_descriptor(
            "mapsentry_build_info",
            "The mapsentry build and role of this process (always 1)",
            None,
            ConstGauge::new(1i64).metric_type(),
        )?;
        ConstGauge::new(1i64).encode(metric.encode_family(&info)?)?;

        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let counter = ConstCounter::new(p.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            counter.metric_type(),
        )?)?;
        let mut gauge = |name: &str, help: &str, value: f64| -> Result<(), std::fmt::Error> {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            p.resident_bytes as f64,
        )?;
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            p.virtual_bytes as f64,
        )?;
        gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            p.start_time_seconds,
        )?;
        gauge(
            "process_open_fds",
            "Number of open file descriptors",
            p.open_fds as f64,
        )?;
        if let Some(max) = p.max_fds {
            gauge(
                "process_max_fds",
                "Maximum number of open file descriptors",
                max as f64,
            )?;
        }
        gauge("process_threads", "Number of OS threads", p.threads as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // A command name with a space and a parenthesis; utime 250, stime 150 ticks, 7 threads,
        // started 1000 ticks after boot, 8 MiB virtual, 300 pages resident.
        let stat = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 7 0 1000 8388608 300 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let p = parse_stat(stat, 1_700_000_000, 100, 4096).expect("parsed");
        assert!((p.cpu_seconds - 4.0).abs() < 1e-9, "{p:?}");
        assert_eq!(p.threads, 7);
        assert!(
            (p.start_time_seconds - 1_700_000_010.0).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(p.virtual_bytes, 8_388_608);
        assert_eq!(p.resident_bytes, 300 * 4096);
        assert_eq!(parse_stat("4242 no parenthesis", 0, 100, 4096), None);
    }

    #[test]
    fn this_process_is_read_and_encoded() {
        let p = ProcessStats::read().expect("/proc/self readable");
        assert!(
            p.resident_bytes > 0 && p.threads >= 1 && p.open_fds >= 3,
            "{p:?}"
        );
        let text = super::super::encode(&[&standard("agent")]);
        for line in [
            "mapsentry_build_info{version=\"",
            "role=\"agent\"} 1",
            "# TYPE process_cpu_seconds counter",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }
}
