//! `MmapEvent` <-> `v1::Event`. Every field maps one to one; the wire form is checked on the way
//! in, so a malformed event from the network becomes an error naming the field, never a panic.
//! Alert updates <-> `v1::AlertRecord` in [`alert`].

use std::sync::Arc;

use mapsentry_policy::{
    Attribution, EnforceAction, Enforcement, FileInfo, K8sMeta, MmapArgs, MmapEvent, Syscall,
    TargetMapping, Workload,
};

use crate::v1;

pub mod alert;

pub use alert::{AlertError, alert_record};

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
    #[error(
        "event field `attribution_ref` ({id}) is only valid on an agent stream of protocol V2, \
         which replaces it with the attribution it defined"
    )]
    AttributionRef { id: u64 },
}

/// A rule the kernel refuses, as an agent reports it.
impl From<&mapsentry_policy::enforce::Refusal> for v1::RefusedRule {
    fn from(refusal: &mapsentry_policy::enforce::Refusal) -> Self {
        Self {
            policy: refusal.policy.to_string(),
            rule: refusal.rule.clone(),
            reason: refusal.reason.clone(),
        }
    }
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
        Self {
            attribution: event.attribution.as_deref().map(attribution_to_wire),
            ..capture_fields(event)
        }
    }
}

/// `event` in its wire form without its attribution: what the agent stream sends with an
/// `attribution_ref` (protocol V2) instead of the attribution itself.
#[must_use]
pub fn capture_fields(event: &MmapEvent) -> v1::Event {
    let args = &event.args;
    v1::Event {
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
        attribution: None,
    }
}

/// `attribution` as an event carries it inline.
#[must_use]
pub fn attribution_to_wire(attribution: &Attribution) -> v1::event::Attribution {
    use v1::event::Attribution as Wire;
    match attribution {
        Attribution::Pod(meta) => Wire::Pod(Box::new(pod_to_wire(meta))),
        Attribution::Host { cgroup, unit } => Wire::Host(v1::HostAttribution {
            cgroup: cgroup.clone(),
            unit: unit.clone(),
        }),
        Attribution::Unknown { .. } => Wire::Unknown(v1::UnknownCgroup {}),
    }
}

fn pod_to_wire(meta: &K8sMeta) -> v1::PodAttribution {
    v1::PodAttribution {
        namespace: meta.namespace.clone(),
        pod: meta.pod.clone(),
        container: meta.container.clone(),
        pod_uid: meta.pod_uid.clone(),
        container_id: meta.container_id.clone(),
        image: meta.image.clone(),
        labels: meta.labels.clone().into_iter().collect(),
        namespace_labels: meta.namespace_labels.clone().into_iter().collect(),
        workload: meta.workload.as_ref().map(|w| v1::Workload {
            kind: w.kind.clone(),
            name: w.name.clone(),
        }),
        resolved: meta.resolved,
    }
}

/// What an event on the agent stream carries for a definition's attribution: the definition's
/// value inline, as a V1 event carries it.
#[must_use]
pub fn defined_attribution(
    defined: &v1::attribution_definition::Attribution,
) -> v1::event::Attribution {
    use v1::attribution_definition::Attribution as Defined;
    use v1::event::Attribution as Wire;
    match defined {
        Defined::Pod(pod) => Wire::Pod(Box::new(pod.clone())),
        Defined::Host(host) => Wire::Host(host.clone()),
        Defined::Unknown(unknown) => Wire::Unknown(*unknown),
    }
}

/// `attribution` defined under `id`, as the agent stream (V2) sends it.
#[must_use]
pub fn definition(id: u64, attribution: &Attribution) -> v1::AttributionDefinition {
    use v1::attribution_definition::Attribution as Defined;
    let attribution = match attribution {
        Attribution::Pod(meta) => Defined::Pod(pod_to_wire(meta)),
        Attribution::Host { cgroup, unit } => Defined::Host(v1::HostAttribution {
            cgroup: cgroup.clone(),
            unit: unit.clone(),
        }),
        Attribution::Unknown { .. } => Defined::Unknown(v1::UnknownCgroup {}),
    };
    v1::AttributionDefinition {
        id,
        attribution: Some(attribution),
    }
}

fn attribution_from_wire(wire: &v1::event::Attribution, cgroup_id: u64) -> Attribution {
    use v1::event::Attribution as Wire;
    match wire {
        Wire::Pod(pod) => Attribution::Pod(K8sMeta {
            namespace: pod.namespace.clone(),
            pod: pod.pod.clone(),
            container: pod.container.clone(),
            pod_uid: pod.pod_uid.clone(),
            container_id: pod.container_id.clone(),
            image: pod.image.clone(),
            labels: pod.labels.clone().into_iter().collect(),
            namespace_labels: pod.namespace_labels.clone().into_iter().collect(),
            workload: pod.workload.as_ref().map(|w| Workload {
                kind: w.kind.clone(),
                name: w.name.clone(),
            }),
            resolved: pod.resolved,
        }),
        Wire::Host(host) => Attribution::Host {
            cgroup: host.cgroup.clone(),
            unit: host.unit.clone(),
        },
        // A reference is refused before (`TryFrom<&v1::Event>`).
        Wire::Unknown(v1::UnknownCgroup {}) | Wire::AttributionRef(_) => {
            Attribution::Unknown { cgroup_id }
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
        event_attributed(event, event.attribution.as_ref())
    }
}

/// `event` with `attribution` (whatever `event.attribution` holds is not read): for holders that
/// keep an event's attribution apart from it, shared by the events that name it.
pub fn event_attributed(
    event: &v1::Event,
    attribution: Option<&v1::event::Attribution>,
) -> Result<MmapEvent, ConvertError> {
    let syscall = v1::Syscall::try_from(event.syscall)
        .map_err(|_| ConvertError::Syscall {
            value: event.syscall,
        })
        .and_then(Syscall::try_from)?;
    let args = event.args.as_ref().ok_or(ConvertError::MissingArgs)?;
    if let Some(v1::event::Attribution::AttributionRef(id)) = attribution {
        return Err(ConvertError::AttributionRef { id: *id });
    }
    Ok(MmapEvent {
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
        attribution: attribution.map(|a| Arc::new(attribution_from_wire(a, event.cgroup_id))),
    })
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
        Ok(_) => {
            if let Some(v1::event::Attribution::AttributionRef(id)) = event.attribution {
                return Err(ConvertError::AttributionRef { id });
            }
            match event.enforced {
                Some(enforced) => enforcement(enforced).map(drop),
                None => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests;
