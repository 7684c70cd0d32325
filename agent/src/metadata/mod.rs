//! Who made a call: cgroup id -> cgroup path (`cgroup_index`), path -> pod UID and container id
//! or host unit (`cgroup_path`), pod UID and container id -> pod, from a watch of this node's
//! pods (`pods`), and the bounded hold that joins them per event (`enrich`).

pub mod attributor;
pub mod cgroup_index;
pub mod cgroup_path;
pub mod enrich;
pub mod pods;
#[cfg(test)]
mod testing;

pub use attributor::{Attributor, Kubernetes, MissingCounter};
pub use cgroup_index::{Cgroup, CgroupIndex, IndexStats, Watcher};
pub use cgroup_path::{CgroupOwner, ContainerRef, QosClass, Runtime};
pub use enrich::{EnrichConfig, EnrichStats, Enriched, Enricher};
pub use pods::{PodCache, PodCacheConfig, PodCacheStats, PodInfo, PodMatch, Reflector};
