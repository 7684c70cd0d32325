//! A loaded policy of either kind, and its name as alerts show it.

use std::fmt;

use crate::crd::{ClusterMmapPolicy, DenyFallback, MmapPolicy, Mode, Rule};

/// The namespace a namespaced policy file without `metadata.namespace` lands in (as with kubectl).
pub const DEFAULT_NAMESPACE: &str = "default";

/// One policy object, namespaced or cluster-wide.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    Namespaced(MmapPolicy),
    Cluster(ClusterMmapPolicy),
}

/// `NAMESPACE/NAME` for an `MmapPolicy`, `NAME` for a `ClusterMmapPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId {
    /// None for a `ClusterMmapPolicy`.
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{namespace}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl Policy {
    /// `MmapPolicy` or `ClusterMmapPolicy`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Namespaced(_) => "MmapPolicy",
            Self::Cluster(_) => "ClusterMmapPolicy",
        }
    }

    #[must_use]
    pub fn id(&self) -> PolicyId {
        match self {
            Self::Namespaced(p) => PolicyId {
                namespace: Some(
                    p.metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
                ),
                name: p.metadata.name.clone().unwrap_or_default(),
            },
            Self::Cluster(p) => PolicyId {
                namespace: None,
                name: p.metadata.name.clone().unwrap_or_default(),
            },
        }
    }

    #[must_use]
    pub fn mode(&self) -> Mode {
        match self {
            Self::Namespaced(p) => p.spec.mode,
            Self::Cluster(p) => p.spec.mode,
        }
    }

    /// What `Deny` rules become where the kernel cannot deny.
    #[must_use]
    pub fn deny_fallback(&self) -> DenyFallback {
        match self {
            Self::Namespaced(p) => p.spec.deny_fallback,
            Self::Cluster(p) => p.spec.deny_fallback,
        }
    }

    #[must_use]
    pub fn rules(&self) -> &[Rule] {
        match self {
            Self::Namespaced(p) => &p.spec.rules,
            Self::Cluster(p) => &p.spec.rules,
        }
    }

    /// `metadata.generation`, for status updates.
    #[must_use]
    pub fn generation(&self) -> Option<i64> {
        match self {
            Self::Namespaced(p) => p.metadata.generation,
            Self::Cluster(p) => p.metadata.generation,
        }
    }
}
