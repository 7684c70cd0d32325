//! `MmapEvent` <-> `v1::Event`. Every field maps one to one; the wire form is checked on the way
//! in, so a malformed event from the network becomes an error naming the field, never a panic.

use mapsentry_policy::{
    EnforceAction, Enforcement, FileInfo, MmapArgs, MmapEvent, Syscall, TargetMapping,
};

use crate::v1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error(
        "event field `syscall`: {value} is not a known syscall (expected mmap, mmap2, old_mmap or mprotect)"
    )]
    Syscall { value: i32 },
    #[error("event field `enforced.action`: {value} is not a known action (expected kill or deny)")]
    EnforceAction { value: i32 },
    #[error("event field `args` is missing")]
    MissingArgs,
}

impl From<Syscall> for v1::Syscall {
    fn from(syscall: Syscall) -> Self {
        match syscall {
            Syscall::Mmap => Self::Mmap,
            Syscall::Mmap2 => Self::Mmap2,
            Syscall::OldMmap => Self::OldMmap,
            Syscall::Mprotect => Self::Mprotect,
        }
    }
}

impl TryFrom<v1::Syscall> for Syscall {
    type Error = ConvertError;

    fn try_from(syscall: v1::Syscall) -> Result<Self, ConvertError> {
        match syscall {
            v1::Syscall::Mmap => Ok(Self::Mmap),
            v1::Syscall::Mmap2 => Ok(Self::Mmap2),
            v1::Syscall::OldMmap => Ok(Self::OldMmap),
            v1::Syscall::Mprotect => Ok(Self::Mprotect),
            v1::Syscall::Unspecified => Err(ConvertError::Syscall {
                value: syscall as i32,
            }),
        }
    }
}

impl From<&MmapEvent> for v1::Event {
    fn from(event: &MmapEvent) -> Self {
        let args = &event.args;
        Self {
            time_ns: event.time_ns,
            syscall: v1::Syscall::from(event.syscall).into(),
            pid: event.pid,
            tid: event.tid,
            ppid: event.ppid,
            uid: event.uid,
            gid: event.gid,
            comm: event.comm.clone(),
            cgroup_id: event.cgroup_id,
            args: Some(v1::MmapArgs {
                addr: args.addr,
                length: args.length,
                prot: args.prot,
                flags: args.flags,
                fd: args.fd,
                pgoffset: args.pgoffset,
                offset: args.offset,
            }),
            ret: event.ret,
            file: event.file.as_ref().map(|file| v1::FileInfo {
                path: file.path.clone(),
                inode: file.inode,
                dev: file.dev,
                memfd: file.memfd,
                shm: file.shm,
                deleted: file.deleted,
                path_truncated: file.path_truncated,
                fs_magic: file.fs_magic,
            }),
            args_unreadable: event.args_unreadable,
            target_mapping: event.target_mapping.map(|t| v1::TargetMapping {
                prev_prot: t.prev_prot,
                file_backed: t.file_backed,
            }),
            enforced: event.enforced.map(|e| v1::Enforcement {
                action: match e.action {
                    EnforceAction::Kill => v1::EnforceAction::Kill,
                    EnforceAction::Deny => v1::EnforceAction::Deny,
                }
                .into(),
                rule_id: e.rule_id,
            }),
        }
    }
}

impl From<MmapEvent> for v1::Event {
    fn from(event: MmapEvent) -> Self {
        Self::from(&event)
    }
}

impl TryFrom<&v1::Event> for MmapEvent {
    type Error = ConvertError;

    fn try_from(event: &v1::Event) -> Result<Self, ConvertError> {
        let syscall = v1::Syscall::try_from(event.syscall)
            .map_err(|_| ConvertError::Syscall {
                value: event.syscall,
            })
            .and_then(Syscall::try_from)?;
        let args = event.args.as_ref().ok_or(ConvertError::MissingArgs)?;
        Ok(Self {
            time_ns: event.time_ns,
            syscall,
            pid: event.pid,
            tid: event.tid,
            ppid: event.ppid,
            uid: event.uid,
            gid: event.gid,
            comm: event.comm.clone(),
            cgroup_id: event.cgroup_id,
            args: MmapArgs {
                addr: args.addr,
                length: args.length,
                prot: args.prot,
                flags: args.flags,
                fd: args.fd,
                pgoffset: args.pgoffset,
                offset: args.offset,
            },
            ret: event.ret,
            file: event.file.as_ref().map(|file| FileInfo {
                path: file.path.clone(),
                inode: file.inode,
                dev: file.dev,
                memfd: file.memfd,
                shm: file.shm,
                deleted: file.deleted,
                path_truncated: file.path_truncated,
                fs_magic: file.fs_magic,
            }),
            args_unreadable: event.args_unreadable,
            target_mapping: event.target_mapping.map(|t| TargetMapping {
                prev_prot: t.prev_prot,
                file_backed: t.file_backed,
            }),
            enforced: event.enforced.map(enforcement).transpose()?,
        })
    }
}

fn enforcement(enforced: v1::Enforcement) -> Result<Enforcement, ConvertError> {
    let action = match v1::EnforceAction::try_from(enforced.action) {
        Ok(v1::EnforceAction::Kill) => EnforceAction::Kill,
        Ok(v1::EnforceAction::Deny) => EnforceAction::Deny,
        Ok(v1::EnforceAction::Unspecified) | Err(_) => {
            return Err(ConvertError::EnforceAction {
                value: enforced.action,
            });
        }
    };
    Ok(Enforcement {
        action,
        rule_id: enforced.rule_id,
    })
}

impl TryFrom<v1::Event> for MmapEvent {
    type Error = ConvertError;

    fn try_from(event: v1::Event) -> Result<Self, ConvertError> {
        Self::try_from(&event)
    }
}

/// Check that a wire event converts, without converting it (no copies).
pub fn validate(event: &v1::Event) -> Result<(), ConvertError> {
    match v1::Syscall::try_from(event.syscall) {
        Ok(v1::Syscall::Unspecified) | Err(_) => Err(ConvertError::Syscall {
            value: event.syscall,
        }),
        Ok(_) if event.args.is_none() => Err(ConvertError::MissingArgs),
        Ok(_) => match event.enforced {
            Some(enforced) => enforcement(enforced).map(drop),
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests;
