//! Who made a call: cgroup id -> cgroup path (`cgroup_index`), path -> pod UID and container id
//! or host unit (`cgroup_path`).

pub mod cgroup_index;
pub mod cgroup_path;
pub mod enrich;
pub mod pods;
#[cfg(test)]
mod testing;

pub use cgroup_index::{Cgroup, CgroupIndex, IndexStats, Watcher};
pub use cgroup_path::{CgroupOwner, ContainerRef, QosClass, Runtime};
