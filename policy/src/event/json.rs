//! The JSON line of an event, written straight into a byte buffer: the same bytes as serializing
//! [`EventLine`](crate::EventLine) with serde_json, at a fraction of the cost. `run` prints every
//! captured call this way; serde's generic map serialization (every key escaped, the flattened
//! fields gathered through a map serializer) was half of `run`'s CPU per event when streaming.
//! The serde form stays the definition of the contract: the tests compare the two byte for byte.
//!
//! A [`LineWriter`] also remembers how it rendered the last times, `prot` and `flags` values:
//! a stream of events repeats them, and rendering them anew (three strings per event) was a
//! tenth of `run`'s CPU per event.

use std::collections::BTreeMap;

use super::{
    EnforceAction, MmapEvent,
    attribution::{Attribution, K8sMeta},
    names,
};
use crate::time::{self, Precision};

/// Append `event`'s JSON line (without the newline) to `out`. A stream of lines is cheaper
/// through one [`LineWriter`].
pub fn write_event_line(out: &mut Vec<u8>, event: &MmapEvent) {
    LineWriter::default().write(out, event);
}

/// Writes event lines, remembering its renderings of the derived fields.
#[derive(Debug, Default)]
pub struct LineWriter {
    /// The Unix second last rendered, and its RFC 3339 form up to the seconds (no zone).
    second: Option<(u64, String)>,
    prot: Memo,
    flags: Memo,
}

impl LineWriter {
    /// Append `event`'s JSON line (without the newline) to `out`.
    pub fn write(&mut self, out: &mut Vec<u8>, event: &MmapEvent) {
        write_fields(out, event);
        out.extend_from_slice(b",\"time\":\"");
        self.time(out, event.time_ns);
        out.extend_from_slice(b"\",\"prot_names\":");
        string(out, self.prot.names(event.args.prot, names::prot_names));
        out.extend_from_slice(b",\"flags_names\":");
        string(out, self.flags.names(event.args.flags, names::flags_names));
        if let Some(error) = event.error_name() {
            out.extend_from_slice(b",\"error\":");
            string(out, error);
        }
        out.push(b'}');
    }

    /// `time_ns` as [`time::rfc3339`] writes it with microseconds: the second's part from the
    /// memo, then the fraction.
    fn time(&mut self, out: &mut Vec<u8>, time_ns: u64) {
        let second = time_ns / 1_000_000_000;
        if self
            .second
            .as_ref()
            .is_none_or(|(known, _)| *known != second)
        {
            let whole = time::rfc3339(second * 1_000_000_000, Precision::Seconds);
            let prefix = whole.strip_suffix('Z').unwrap_or_default().to_owned();
            self.second = Some((second, prefix));
        }
        let prefix = self.second.as_ref().map_or("", |(_, prefix)| prefix);
        if prefix.is_empty() {
            return; // Out of jiff's range: rfc3339 writes nothing either.
        }
        out.extend_from_slice(prefix.as_bytes());
        let micros = (time_ns % 1_000_000_000) / 1_000;
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(micros);
        out.push(b'.');
        out.extend(std::iter::repeat_n(b'0', 6 - digits.len()));
        out.extend_from_slice(digits.as_bytes());
        out.push(b'Z');
    }
}

/// The names of the last few values of one bit field, by value (direct-mapped).
#[derive(Debug, Default)]
struct Memo {
    slots: [Option<(u64, String)>; 8],
}

impl Memo {
    fn names(&mut self, value: u64, render: fn(u64) -> String) -> &str {
        // Fibonacci hashing: the top three bits of the product pick the slot.
        let slot = (value.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 61) as usize;
        let entry = &mut self.slots[slot];
        if entry.as_ref().is_none_or(|(known, _)| *known != value) {
            *entry = Some((value, render(value)));
        }
        entry.as_ref().map_or("", |(_, names)| names)
    }
}

/// Every field of the line but the derived ones, from the opening brace.
fn write_fields(out: &mut Vec<u8>, event: &MmapEvent) {
    out.extend_from_slice(b"{\"kind\":\"event\",\"time_ns\":");
    number(out, event.time_ns);
    out.extend_from_slice(b",\"syscall\":\"");
    out.extend_from_slice(event.syscall.as_str().as_bytes());
    out.extend_from_slice(b"\",\"pid\":");
    number(out, event.pid);
    out.extend_from_slice(b",\"tid\":");
    number(out, event.tid);
    out.extend_from_slice(b",\"ppid\":");
    number(out, event.ppid);
    out.extend_from_slice(b",\"uid\":");
    number(out, event.uid);
    out.extend_from_slice(b",\"gid\":");
    number(out, event.gid);
    out.extend_from_slice(b",\"comm\":");
    string(out, &event.comm);
    out.extend_from_slice(b",\"cgroup_id\":");
    number(out, event.cgroup_id);
    let args = &event.args;
    out.extend_from_slice(b",\"args\":{\"addr\":");
    number(out, args.addr);
    out.extend_from_slice(b",\"length\":");
    number(out, args.length);
    out.extend_from_slice(b",\"prot\":");
    number(out, args.prot);
    out.extend_from_slice(b",\"flags\":");
    number(out, args.flags);
    out.extend_from_slice(b",\"fd\":");
    number(out, args.fd);
    out.extend_from_slice(b",\"pgoffset\":");
    number(out, args.pgoffset);
    out.extend_from_slice(b",\"offset\":");
    number(out, args.offset);
    out.extend_from_slice(b"},\"ret\":");
    number(out, event.ret);
    out.extend_from_slice(b",\"file\":");
    match &event.file {
        None => out.extend_from_slice(b"null"),
        Some(file) => {
            out.extend_from_slice(b"{\"path\":");
            string(out, &file.path);
            out.extend_from_slice(b",\"inode\":");
            number(out, file.inode);
            out.extend_from_slice(b",\"dev\":");
            number(out, file.dev);
            out.extend_from_slice(b",\"memfd\":");
            boolean(out, file.memfd);
            out.extend_from_slice(b",\"shm\":");
            boolean(out, file.shm);
            out.extend_from_slice(b",\"deleted\":");
            boolean(out, file.deleted);
            out.extend_from_slice(b",\"path_truncated\":");
            boolean(out, file.path_truncated);
            out.extend_from_slice(b",\"fs_magic\":");
            number(out, file.fs_magic);
            out.push(b'}');
        }
    }
    if event.args_unreadable {
        out.extend_from_slice(b",\"args_unreadable\":true");
    }
    if let Some(target) = event.target_mapping {
        out.extend_from_slice(b",\"target_mapping\":{\"prev_prot\":");
        number(out, target.prev_prot);
        out.extend_from_slice(b",\"file_backed\":");
        boolean(out, target.file_backed);
        out.push(b'}');
    }
    if let Some(enforced) = event.enforced {
        out.extend_from_slice(b",\"enforced\":{\"action\":");
        out.extend_from_slice(match enforced.action {
            EnforceAction::Kill => b"\"kill\"",
            EnforceAction::Deny => b"\"deny\"",
        });
        out.extend_from_slice(b",\"rule_id\":");
        number(out, enforced.rule_id);
        out.push(b'}');
    }
    attribution(out, event.attribution.as_deref());
}

/// `"namespace"`, `"pod"`, `"container"`, `"k8s"`, `"host"` (see `attribution_line`).
fn attribution(out: &mut Vec<u8>, attribution: Option<&Attribution>) {
    match attribution {
        None => out.extend_from_slice(
            b",\"namespace\":null,\"pod\":null,\"container\":null,\"k8s\":null,\"host\":null",
        ),
        Some(Attribution::Pod(meta)) => pod(out, meta),
        Some(Attribution::Host { cgroup, unit }) => {
            out.extend_from_slice(
                b",\"namespace\":null,\"pod\":null,\"container\":null,\"k8s\":null,\"host\":{\"cgroup\":",
            );
            string(out, cgroup);
            out.extend_from_slice(b",\"unit\":");
            optional_string(out, unit.as_deref());
            out.push(b'}');
        }
        Some(Attribution::Unknown { .. }) => out.extend_from_slice(
            b",\"namespace\":null,\"pod\":null,\"container\":null,\"k8s\":{\"pod_uid\":null,\"container_id\":null,\"image\":null,\"labels\":{},\"workload\":null,\"resolved\":false},\"host\":null",
        ),
    }
}

fn pod(out: &mut Vec<u8>, meta: &K8sMeta) {
    out.extend_from_slice(b",\"namespace\":");
    optional_string(out, meta.namespace.as_deref());
    out.extend_from_slice(b",\"pod\":");
    optional_string(out, meta.pod.as_deref());
    out.extend_from_slice(b",\"container\":");
    optional_string(out, meta.container.as_deref());
    out.extend_from_slice(b",\"k8s\":{\"pod_uid\":");
    optional_string(out, meta.pod_uid.as_deref());
    out.extend_from_slice(b",\"container_id\":");
    optional_string(out, meta.container_id.as_deref());
    out.extend_from_slice(b",\"image\":");
    optional_string(out, meta.image.as_deref());
    out.extend_from_slice(b",\"labels\":");
    labels(out, &meta.labels);
    if !meta.namespace_labels.is_empty() {
        out.extend_from_slice(b",\"namespace_labels\":");
        labels(out, &meta.namespace_labels);
    }
    out.extend_from_slice(b",\"workload\":");
    match &meta.workload {
        None => out.extend_from_slice(b"null"),
        Some(workload) => {
            out.extend_from_slice(b"{\"kind\":");
            string(out, &workload.kind);
            out.extend_from_slice(b",\"name\":");
            string(out, &workload.name);
            out.push(b'}');
        }
    }
    out.extend_from_slice(b",\"resolved\":");
    boolean(out, meta.resolved);
    out.extend_from_slice(b"},\"host\":null");
}

fn labels(out: &mut Vec<u8>, labels: &BTreeMap<String, String>) {
    out.push(b'{');
    for (i, (key, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, key);
        out.push(b':');
        string(out, value);
    }
    out.push(b'}');
}

fn number(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn boolean(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

fn optional_string(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(text) => string(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string, escaped as serde_json escapes it: `"` and `\` with a backslash, the control
/// characters U+0000..U+001F as `\b \t \n \f \r` or `\u00XX` (lowercase hex), everything else
/// (UTF-8 included) as it is.
fn string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests;
