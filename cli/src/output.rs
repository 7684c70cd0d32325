//! How records are printed: one human-readable line, or one JSON object per line.

use std::fmt::Write as _;

use mapsentry_policy::{MmapEvent, Syscall, event::json as event_json, names};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One human-readable line per record, prot and flags as names.
    Text,
    /// One JSON object per line; every line has "kind".
    Json,
}

/// Writes a stream of event lines in one format.
#[derive(Debug)]
pub struct EventWriter {
    format: Format,
    json: event_json::LineWriter,
}

impl EventWriter {
    #[must_use]
    pub fn new(format: Format) -> Self {
        Self {
            format,
            json: event_json::LineWriter::default(),
        }
    }

    /// Append `event`'s line, newline included, to `out`.
    pub fn write(&mut self, out: &mut Vec<u8>, event: &MmapEvent) {
        match self.format {
            Format::Json => self.json.write(out, event),
            Format::Text => out.extend_from_slice(text_line(event).as_bytes()),
        }
        out.push(b'\n');
    }
}

/// `09:35:01.123456 mmap cat[1234/1234] addr=0x0 len=4096 prot=PROT_READ flags=MAP_PRIVATE fd=3 off=0x0 = 0x7f.. file=/etc/passwd`
#[must_use]
pub fn text_line(event: &MmapEvent) -> String {
    let time = event.time_rfc3339();
    let clock = time.get(11..26).unwrap_or(&time);
    let args = &event.args;
    let ret = if event.failed() {
        match names::errno_name(event.ret) {
            Some(name) => format!("{} ({name})", event.ret),
            None => event.ret.to_string(),
        }
    } else {
        format!("{:#x}", event.ret)
    };
    let details = match (event.syscall, event.target_mapping) {
        (Syscall::Mprotect, Some(target)) => format!(
            "(was {}, {})",
            names::prot_names(target.prev_prot),
            if target.file_backed {
                "file-backed"
            } else {
                "anonymous"
            }
        ),
        (Syscall::Mmap2, _) => format!(
            "flags={} fd={} pgoff={}",
            names::flags_names(args.flags),
            args.fd,
            args.pgoffset
        ),
        _ => format!(
            "flags={} fd={} off={:#x}",
            names::flags_names(args.flags),
            args.fd,
            args.offset
        ),
    };
    let mut line = format!(
        "{clock} {:<5} {}[{}/{}] addr={:#x} len={} prot={} {details} = {ret}",
        event.syscall.as_str(),
        event.comm,
        event.pid,
        event.tid,
        args.addr,
        args.length,
        names::prot_names(args.prot),
    );
    if let Some(file) = &event.file {
        let _ = write!(line, " file={} ino={}", file.path, file.inode);
        for (set, marker) in [
            (file.memfd, "memfd"),
            (file.shm, "shm"),
            (file.deleted, "deleted"),
            (file.path_truncated, "truncated"),
        ] {
            if set {
                let _ = write!(line, " [{marker}]");
            }
        }
    }
    if event.args_unreadable {
        line.push_str(" [args unreadable]");
    }
    if let Some(enforced) = event.enforced {
        let action = match enforced.action {
            mapsentry_policy::EnforceAction::Kill => "KILLED",
            mapsentry_policy::EnforceAction::Deny => "DENIED",
        };
        let _ = write!(line, " [{action} by rule {}]", enforced.rule_id);
    }
    if let Some(mapsentry_policy::Attribution::Pod(meta)) = event.attribution.as_deref() {
        if let (Some(namespace), Some(pod)) = (&meta.namespace, &meta.pod) {
            let _ = write!(line, " pod={namespace}/{pod}");
            if let Some(container) = &meta.container {
                let _ = write!(line, " container={container}");
            }
        } else {
            let uid = meta.pod_uid.as_deref().unwrap_or("?");
            let _ = write!(line, " pod_uid={uid} [unresolved]");
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use mapsentry_policy::{FileInfo, MmapArgs};

    use super::*;

    #[test]
    fn text_line_names_bits_errors_and_files() {
        let mut event = MmapEvent {
            time_ns: 1_764_236_101_123_456_000,
            syscall: Syscall::Mmap,
            pid: 7,
            tid: 8,
            ppid: 1,
            uid: 0,
            gid: 0,
            comm: "cat".into(),
            cgroup_id: 1,
            args: MmapArgs {
                addr: 0,
                length: 4096,
                prot: 3,
                flags: 0x22,
                fd: -1,
                pgoffset: 0,
                offset: 0,
            },
            ret: 0x7f00_0000_0000,
            file: None,
            args_unreadable: false,
            target_mapping: None,
            enforced: None,
            attribution: None,
        };
        assert_eq!(
            text_line(&event),
            "09:35:01.123456 mmap  cat[7/8] addr=0x0 len=4096 prot=PROT_READ|PROT_WRITE \
             flags=MAP_PRIVATE|MAP_ANONYMOUS fd=-1 off=0x0 = 0x7f0000000000"
        );
        event.syscall = Syscall::Mmap2;
        event.ret = -9;
        event.args.pgoffset = 3;
        event.file = Some(FileInfo {
            path: "/memfd:jit".into(),
            inode: 5,
            dev: 1,
            memfd: true,
            shm: false,
            deleted: false,
            path_truncated: false,
            fs_magic: 0x0102_1994,
        });
        let line = text_line(&event);
        assert!(line.contains("mmap2 cat[7/8]"), "{line}");
        assert!(
            line.ends_with("pgoff=3 = -9 (EBADF) file=/memfd:jit ino=5 [memfd]"),
            "{line}"
        );

        event.syscall = Syscall::Mprotect;
        event.file = None;
        event.ret = 0;
        event.args.prot = 5;
        event.target_mapping = Some(mapsentry_policy::TargetMapping {
            prev_prot: 3,
            file_backed: false,
        });
        event.enforced = Some(mapsentry_policy::Enforcement {
            action: mapsentry_policy::EnforceAction::Kill,
            rule_id: 4,
        });
        let line = text_line(&event);
        assert!(
            line.ends_with("prot=PROT_READ|PROT_EXEC (was PROT_READ|PROT_WRITE, anonymous) = 0x0 [KILLED by rule 4]"),
            "{line}"
        );
    }
}
