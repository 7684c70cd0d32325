//! What the benchmarks that make real cgroups share: the tree they make (removed when dropped),
//! the kubelet-shaped names in it, and the pods they stand for.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use mapsentry_agent::metadata::pods::{ContainerInfo, PodInfo};
use mapsentry_policy::Workload;

/// A directory tree under the cgroup2 mount, removed (deepest first) when dropped.
pub struct Tree(pub PathBuf);

impl Drop for Tree {
    fn drop(&mut self) {
        let mut dirs = Vec::new();
        collect(&self.0, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            collect(&child.path(), out);
        }
    }
}

/// Pod UID number `n`.
pub fn uid(n: usize) -> String {
    format!("{n:08x}-0000-4000-8000-{n:012x}")
}

/// Container id `c` of pod `pod` (64 hex digits).
pub fn cid(pod: usize, c: usize) -> String {
    format!("{pod:032x}{c:032x}")
}

/// Pod number `p` in namespace `ns-{p % namespaces}`, owned by a Deployment, with 8 labels and
/// `containers` containers (ids `cid(p, c)`).
pub fn pod_info(p: usize, namespaces: usize, containers: usize) -> PodInfo {
    let labels: BTreeMap<String, String> = (0..8)
        .map(|l| {
            (
                format!("label-{l}.example.com/key"),
                format!("value-{p}-{l}"),
            )
        })
        .collect();
    PodInfo {
        uid: uid(p),
        namespace: format!("ns-{}", p % namespaces),
        name: format!("pod-{p}-abcde"),
        labels,
        workload: Some(Workload {
            kind: "Deployment".into(),
            name: format!("deploy-{p}"),
        }),
        containers: (0..containers)
            .map(|c| ContainerInfo {
                name: format!("c{c}"),
                id: Some(cid(p, c)),
                image: Some(format!("registry.example/img-{c}:1")),
            })
            .collect(),
    }
}
