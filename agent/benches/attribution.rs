//! Attribution cost per event with 1,000 pods and 10,000 cgroups known (issue goal: < 200 ns
//! median per lookup on a hit; agent memory < 64 MiB RSS at that size).
//!
//! Real cgroups: 10,000 directories are made under this host's cgroup2 mount (kubelet-shaped,
//! 10 per pod), indexed, and removed at the end; needs root. One lookup = cgroup id -> cgroup
//! (path parsed at indexing) + pod UID and container id -> pod; the enricher remembers the result
//! per cgroup id until the pod cache changes, so the per-event cost is its memo hit.
//! Printed side by side with a bare `HashMap<u64, u64>` lookup on the same ids, as a ratio.
//!
//! Run: `nice -n 10 cargo bench -p mapsentry-agent --bench attribution`

use std::{
    collections::HashMap,
    hint::black_box,
    os::unix::fs::MetadataExt,
    time::{Duration, Instant},
};

use mapsentry_agent::metadata::{
    CgroupIndex, CgroupOwner, EnrichConfig, Enricher, PodCache, PodCacheConfig,
    cgroup_index::find_cgroup2_root,
};

mod common;
use common::{Tree, cid, pod_info, uid};

const PODS: usize = 1000;
const CGROUPS_PER_POD: usize = 10;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

#[expect(
    clippy::cast_precision_loss,
    reason = "nanoseconds of a benchmark round fit an f64"
)]
fn per_event(elapsed: Duration, events: usize) -> f64 {
    elapsed.as_nanos() as f64 / events as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let root = find_cgroup2_root().unwrap_or_else(|e| panic!("the benchmark needs cgroup2: {e}"));
    let top = root.join(format!("mapsentry-bench-{}", std::process::id()));
    let tree = Tree(top.clone());
    let made = Instant::now();
    let mut ids = Vec::with_capacity(PODS * CGROUPS_PER_POD);
    for p in 0..PODS {
        let pod_dir = top.join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            uid(p).replace('-', "_")
        ));
        for c in 0..CGROUPS_PER_POD - 1 {
            let dir = pod_dir.join(format!("cri-containerd-{}.scope", cid(p, c)));
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("mkdir {} (needs root): {e}", dir.display()));
            ids.push(std::fs::metadata(&dir).expect("stat").ino());
        }
        ids.push(std::fs::metadata(&pod_dir).expect("stat").ino());
    }
    println!("made {} cgroups in {:?}", ids.len(), made.elapsed());

    let rss_before = rss_kib();
    let index = CgroupIndex::open(&root, Duration::from_secs(1)).expect("index");
    let cache = PodCache::new(PodCacheConfig::new("bench-node").expect("node"));
    for p in 0..PODS {
        cache.apply(pod_info(p, 50, CGROUPS_PER_POD - 1));
    }
    let rss_after = rss_kib();
    println!(
        "indexed {} cgroups (whole host) and {PODS} pods; RSS {} KiB -> {} KiB (+{} KiB)",
        index.stats().cgroups,
        rss_before,
        rss_after,
        rss_after.saturating_sub(rss_before)
    );

    let baseline: HashMap<u64, u64> = ids.iter().map(|&id| (id, id)).collect();
    // A fixed pseudo-random order over the ids (hits only).
    let order: Vec<u64> = (0..ids.len())
        .map(|i| ids[(i * 7919) % ids.len()])
        .collect();
    let rounds = 51;
    // The per-event path: the enricher's remembered attribution per cgroup id.
    let mut enricher = Enricher::new(index.clone(), Some(cache.clone()), EnrichConfig::default());
    let mut memo_ns = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        for &id in &order {
            black_box(enricher.attribution(id).expect("complete"));
        }
        memo_ns.push(per_event(start.elapsed(), order.len()));
    }
    let (mut lookup_ns, mut base_ns) = (Vec::new(), Vec::new());
    let mut hits = 0usize;
    for _ in 0..rounds {
        let start = Instant::now();
        for &id in &order {
            let cgroup = index.get(id).expect("hit");
            if let CgroupOwner::Pod {
                pod_uid, container, ..
            } = &cgroup.owner
                && let Some(hit) = cache.lookup(pod_uid, container.as_ref().map(|c| c.id.as_str()))
            {
                hits += usize::from(black_box(&hit).container.is_some());
            }
        }
        lookup_ns.push(per_event(start.elapsed(), order.len()));
        let start = Instant::now();
        for &id in &order {
            black_box(baseline.get(&id));
        }
        base_ns.push(per_event(start.elapsed(), order.len()));
    }
    let (lookup, base, memo) = (median(lookup_ns), median(base_ns), median(memo_ns));
    println!(
        "per-event attribution (enricher, remembered): median {memo:.1} ns/event (goal < 200); ratio to bare HashMap {:.1}x",
        memo / base
    );
    println!(
        "uncached lookup (index + pod cache): median {lookup:.1} ns/event; bare HashMap<u64,u64> {base:.1} ns; ratio {:.1}x; container hits {}",
        lookup / base,
        hits / rounds
    );
    drop(tree);
}
