//! Per-stage throughput of the agent on a synthetic feed, on one core: events per CPU-second of
//! this thread (`CLOCK_THREAD_CPUTIME_ID`) and per wall-clock second, for each stage and for the
//! three chained (issue 9's target: decode + attribution >= 1,000,000 events/s per core).
//!
//! - **decode**: ring-buffer records, built byte for byte as the BPF program writes
//!   `struct ms_event` (the fixed header, then `path_len` bytes of path), laid out as in the ring
//!   buffer's data area (an 8-byte record header, records 8-byte aligned), decoded by
//!   `events::wire::decode` in the reader's loop (count, decode, push). The batch of events is
//!   dropped after each read here (its allocations are freed in this stage). Not included: aya's
//!   ring-buffer bookkeeping per record (two atomic loads, one store) and the epoll wake-up.
//! - **attribution**: `metadata::Attributor::attribute` per read, as the agent's pump calls it,
//!   over real cgroups made under this host's cgroup2 mount (100 pods x 3 containers plus the
//!   pod cgroups, 10 host units; needs root), the whole host indexed, pods applied to the pod
//!   cache. Every event resolves (the enricher's per-cgroup memory after the first round).
//! - **batch**: what the shipper does per event before the socket: `shipper::buffer::Buffer::push`
//!   (the event's wire form with its attribution as an id of the stream's dictionary; sealing
//!   batches of 1,024, each encoded once into the message that sends it), then per sealed batch
//!   the attribution definitions it needs that the stream has not had (each round is one
//!   stream) encoded, and those bytes and the batch's copied into a reused buffer as the
//!   shipper's codec does into tonic's, and the ack. Bytes per event on the agent stream count
//!   the batches and the definitions.
//! - **chained**: one read's records decoded, attributed, taken (`mem::take`, as the pump hands
//!   them to the shipper) and batched; the mpsc hop to the shipper task and gRPC/HTTP2 framing
//!   are not included.
//!
//! One read = the records of one 64 KiB wake-up (the capture's default `wakeup_bytes`).
//!
//! Run: `nice -n 10 cargo bench -p mapsentry-agent --bench pipeline_stages`
//! (`BENCH_EVENTS`, `BENCH_ROUNDS` override the feed size and the rounds).

use std::{
    hint::black_box,
    ops::Range,
    os::unix::fs::MetadataExt,
    path::Path,
    time::{Duration, Instant},
};

use mapsentry_agent::{
    capture::DEFAULT_WAKEUP_BYTES,
    events::wire::{self, RawEventHeader},
    metadata::{
        Attributor, CgroupIndex, EnrichConfig, PodCache, PodCacheConfig,
        cgroup_index::find_cgroup2_root,
    },
    shipper::{
        buffer::{Buffer, Limits},
        encoded::Encoded,
    },
};
use mapsentry_policy::MmapEvent;
use mapsentry_proto::v1;
use zerocopy::{FromZeros as _, IntoBytes as _};

mod common;
use common::{Tree, cid, pod_info, uid};

const PODS: usize = 100;
const CONTAINERS_PER_POD: usize = 3;
const HOST_UNITS: usize = 10;
/// Of 100 events: this many from host units, the rest from pod containers.
const HOST_PERCENT: u64 = 15;
/// `BPF_RINGBUF_HDR_SZ`.
const RINGBUF_HDR: usize = 8;
/// What the shipper's batch holds at most (`ShipperConfig::new`).
const BATCH_MAX_EVENTS: usize = 1024;
const BATCH_MAX_BYTES: usize = 1 << 20;
const BUFFER_BYTES: usize = 64 << 20;
const TARGET_PER_CPU_SECOND: f64 = 1_000_000.0;
/// Bytes per event on the agent stream (issue 19).
const TARGET_BYTES_PER_EVENT: f64 = 150.0;

/// File-backed mappings' paths (20-60 bytes, checked).
const PATHS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
    "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30",
    "/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so",
    "/usr/local/lib/python3.11/lib-dynload/_ssl.cpython-311.so",
    "/app/node_modules/.bin/esbuild",
    "/lib/ld-musl-x86_64.so.1",
    "/usr/share/zoneinfo/Etc/UTC",
    "/var/lib/app/data/index-0001.db",
];
const COMMS: &[&[u8]] = &[
    b"java",
    b"python3",
    b"nginx",
    b"envoy",
    b"node",
    b"containerd-shim",
];

// ---- the cgroups and pods ----

fn mkdir(dir: &Path) -> u64 {
    std::fs::create_dir_all(dir)
        .unwrap_or_else(|e| panic!("mkdir {} (needs root): {e}", dir.display()));
    std::fs::metadata(dir)
        .unwrap_or_else(|e| panic!("stat {}: {e}", dir.display()))
        .ino()
}

/// The cgroup ids events come from: (pod containers, host units).
struct Population {
    containers: Vec<u64>,
    hosts: Vec<u64>,
}

fn make_cgroups(top: &Path) -> Population {
    let mut containers = Vec::new();
    for p in 0..PODS {
        let pod_dir = top.join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            uid(p).replace('-', "_")
        ));
        for c in 0..CONTAINERS_PER_POD {
            containers.push(mkdir(
                &pod_dir.join(format!("cri-containerd-{}.scope", cid(p, c))),
            ));
        }
    }
    let hosts = (0..HOST_UNITS)
        .map(|u| mkdir(&top.join(format!("system.slice/bench-unit-{u}.service"))))
        .collect();
    Population { containers, hosts }
}

fn pod_cache() -> PodCache {
    let cache = PodCache::new(PodCacheConfig::new("bench-node").expect("node name"));
    for p in 0..PODS {
        cache.apply(pod_info(p, 20, CONTAINERS_PER_POD));
    }
    cache
}

// ---- the feed ----

/// xorshift64*: a fixed pseudo-random sequence, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Ring-buffer data: records at 8-byte aligned offsets, grouped into reads of 64 KiB.
struct Feed {
    data: Vec<u8>,
    records: Vec<Range<usize>>,
    reads: Vec<Range<usize>>,
    anonymous: usize,
    file_backed: usize,
    mprotect: usize,
}

impl Feed {
    fn record(&self, i: usize) -> &[u8] {
        &self.data[self.records[i].clone()]
    }
}

fn make_feed(events: usize, population: &Population) -> Feed {
    assert!(
        PATHS.iter().all(|p| (20..=60).contains(&p.len())),
        "paths of 20-60 bytes"
    );
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut feed = Feed {
        data: Vec::new(),
        records: Vec::with_capacity(events),
        reads: Vec::new(),
        anonymous: 0,
        file_backed: 0,
        mprotect: 0,
    };
    let mut read_start = (0, 0);
    for i in 0..events {
        let mut h = RawEventHeader::new_zeroed();
        h.ts_boot_ns = 1_000_000_000 + 2_000 * i as u64;
        h.cgroup_id = if rng.next() % 100 < HOST_PERCENT {
            population.hosts[rng.below(population.hosts.len())]
        } else {
            population.containers[rng.below(population.containers.len())]
        };
        h.pid = 1000 + rng.below(4000) as u32;
        h.tid = h.pid + rng.below(8) as u32;
        h.ppid = 1 + rng.below(1000) as u32;
        h.uid = if rng.next().is_multiple_of(2) {
            0
        } else {
            65_534
        };
        h.gid = h.uid;
        let comm = COMMS[rng.below(COMMS.len())];
        h.comm[..comm.len()].copy_from_slice(comm);
        let kind = rng.next() % 100;
        let mut path: &[u8] = b"";
        if kind < 70 {
            // Anonymous memory: malloc arenas, thread stacks, JIT heaps.
            h.syscall = wire::SYSCALL_MMAP;
            h.length = 4096 << rng.below(9);
            h.prot = 3;
            h.flags = 0x22;
            h.fd = -1;
            h.ret = 0x7f00_0000_0000 + (i as i64) * 0x1000;
            feed.anonymous += 1;
        } else if kind < 90 {
            // A shared library or a data file.
            h.syscall = wire::SYSCALL_MMAP;
            h.length = 4096 << rng.below(6);
            h.prot = if rng.next().is_multiple_of(2) { 5 } else { 1 };
            h.flags = 0x802;
            h.fd = 3 + rng.below(60) as i32;
            h.pgoffset = rng.below(64) as u64;
            h.offset = h.pgoffset * 4096;
            h.ret = 0x7f10_0000_0000 + (i as i64) * 0x1000;
            h.inode = 100_000 + rng.below(5000) as u64;
            h.dev = (8 << 20) | 1;
            h.fs_magic = 0xef53;
            h.file_flags = wire::FILE_PRESENT;
            path = PATHS[rng.below(PATHS.len())].as_bytes();
            h.path_len = path.len() as u16;
            feed.file_backed += 1;
        } else {
            // mprotect of an anonymous mapping (a JIT flipping a page to read-exec).
            h.syscall = wire::SYSCALL_MPROTECT;
            h.addr = 0x7f00_0000_0000 + (rng.below(1 << 20) as u64) * 0x1000;
            h.length = 4096;
            h.prot = 5;
            h.prev_prot = 3;
            h.fd = -1;
            feed.mprotect += 1;
        }
        let size = wire::HEADER_LEN + path.len();
        let start = feed.data.len() + RINGBUF_HDR;
        feed.data.extend_from_slice(&(size as u32).to_ne_bytes());
        feed.data.extend_from_slice(&0u32.to_ne_bytes());
        feed.data.extend_from_slice(h.as_bytes());
        feed.data.extend_from_slice(path);
        feed.data.resize(feed.data.len().next_multiple_of(8), 0);
        feed.records.push(start..start + size);
        if feed.data.len() - read_start.1 >= DEFAULT_WAKEUP_BYTES as usize {
            feed.reads.push(read_start.0..i + 1);
            read_start = (i + 1, feed.data.len());
        }
    }
    if read_start.0 < events {
        feed.reads.push(read_start.0..events);
    }
    feed
}

// ---- the stages ----

/// What the reader does per read (`events::Decoder::drain`).
fn decode_read(feed: &Feed, read: &Range<usize>, out: &mut Vec<MmapEvent>, counts: &mut [u64; 2]) {
    for i in read.clone() {
        counts[0] += 1;
        match wire::decode(feed.record(i), 0) {
            Ok(event) => out.push(event),
            Err(_) => counts[1] += 1,
        }
    }
}

/// What the shipper task does with one hand-over, then sends and acks every sealed batch.
struct Ship {
    buffer: Buffer,
    next_send: u64,
    wire: Vec<u8>,
    bytes: u64,
    events: u64,
    /// Attribution definitions sent.
    definitions: u64,
}

impl Ship {
    fn new() -> Self {
        Self {
            buffer: Buffer::new(Limits {
                batch_max_events: BATCH_MAX_EVENTS,
                batch_max_bytes: BATCH_MAX_BYTES,
                buffer_bytes: BUFFER_BYTES,
            }),
            next_send: 1,
            wire: Vec::with_capacity(BATCH_MAX_BYTES + 1024),
            bytes: 0,
            events: 0,
            definitions: 0,
        }
    }

    fn take(&mut self, events: &[MmapEvent]) {
        for event in events {
            self.buffer.push(event);
        }
        self.send();
    }

    fn finish(&mut self) {
        self.buffer.seal();
        self.send();
    }

    /// The attribution definitions the next batch needs first (each attribution once per
    /// round: a round is one stream), encoded and counted in the bytes on the wire.
    fn send_definitions(&mut self) {
        if let Some(definitions) = self.buffer.definitions(self.next_send) {
            self.definitions += definitions.definitions.len() as u64;
            let message = Encoded::from(v1::AgentMessage {
                msg: Some(v1::agent_message::Msg::Attributions(definitions)),
            });
            self.wire.clear();
            self.wire.extend_from_slice(message.as_bytes());
            self.bytes += self.wire.len() as u64;
            black_box(&self.wire);
        }
    }

    fn send(&mut self) {
        self.send_definitions();
        while let Some(batch) = self.buffer.get_mut(self.next_send) {
            batch.sent = true;
            self.events += batch.count as u64;
            let message = batch.message.clone();
            self.wire.clear();
            self.wire.extend_from_slice(message.as_bytes());
            self.bytes += self.wire.len() as u64;
            black_box(&self.wire);
            self.next_send += 1;
            self.send_definitions();
        }
        self.buffer.ack(self.next_send - 1);
    }
}

// ---- measuring ----

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[derive(Clone, Copy)]
struct Sample {
    cpu: Duration,
    wall: Duration,
}

fn measure(f: impl FnOnce()) -> Sample {
    let (cpu, wall) = (thread_cpu(), Instant::now());
    f();
    Sample {
        cpu: thread_cpu().saturating_sub(cpu),
        wall: wall.elapsed(),
    }
}

fn ns_per_event(d: Duration, events: usize) -> f64 {
    ratio(d.as_nanos() as u64, events as u64)
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counts of a benchmark round fit an f64"
)]
fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Stage {
    name: &'static str,
    samples: Vec<Sample>,
}

impl Stage {
    fn cpu_ns(&self, events: usize) -> f64 {
        median(
            self.samples
                .iter()
                .map(|s| ns_per_event(s.cpu, events))
                .collect(),
        )
    }

    fn wall_ns(&self, events: usize) -> f64 {
        median(
            self.samples
                .iter()
                .map(|s| ns_per_event(s.wall, events))
                .collect(),
        )
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a count: {e}")),
        Err(_) => default,
    }
}

fn main() {
    let events = env_usize("BENCH_EVENTS", 200_000);
    let rounds = env_usize("BENCH_ROUNDS", 11);
    let root = find_cgroup2_root().unwrap_or_else(|e| panic!("the benchmark needs cgroup2: {e}"));
    let top = root.join(format!("mapsentry-bench-stages-{}", std::process::id()));
    let tree = Tree(top.clone());
    let population = make_cgroups(&top);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // The cgroup watch task is spawned here and never polled: the measured loops run on this
    // thread alone, as the pump does between two reads.
    let _entered = runtime.enter();
    let index = CgroupIndex::open(&root, Duration::from_secs(1)).expect("index the cgroups");
    let indexed = index.stats().cgroups;
    let mut attributor =
        Attributor::with_pod_cache(index, Some(pod_cache()), EnrichConfig::default())
            .expect("the attribution stage");

    let feed = make_feed(events, &population);
    println!(
        "feed: {events} records ({} anonymous mmap, {} file-backed, {} mprotect), {} reads of \
         ~{} KiB ({:.0} records each), {:.1} MiB; population: {PODS} pods x {CONTAINERS_PER_POD} \
         containers, {HOST_UNITS} host units ({HOST_PERCENT}% of events), {indexed} cgroups \
         indexed (whole host); {rounds} rounds",
        feed.anonymous,
        feed.file_backed,
        feed.mprotect,
        feed.reads.len(),
        DEFAULT_WAKEUP_BYTES >> 10,
        ratio(events as u64, feed.reads.len() as u64),
        ratio(feed.data.len() as u64, 1 << 20),
    );

    // The attribution and batch stages' inputs: the feed, decoded once per read.
    let mut decoded: Vec<Vec<MmapEvent>> = feed
        .reads
        .iter()
        .map(|read| {
            let mut out = Vec::new();
            decode_read(&feed, read, &mut out, &mut [0; 2]);
            out
        })
        .collect();
    // Warm-up: the enricher learns every cgroup; every event must come out attributed.
    for batch in &mut decoded {
        attributor.attribute(batch, Instant::now());
    }
    let stats = attributor.stats();
    assert_eq!(stats.held, 0, "every cgroup is known: nothing is held");
    assert_eq!(stats.missing, 0, "every event resolves");
    assert_eq!(decoded.iter().map(Vec::len).sum::<usize>(), events);

    let mut stages = ["decode", "attribution", "batch", "chained"].map(|name| Stage {
        name,
        samples: Vec::with_capacity(rounds),
    });
    let mut out = Vec::with_capacity(BATCH_MAX_EVENTS);
    let mut shipped = (0, 0, 0);
    for _ in 0..rounds {
        let mut counts = [0u64; 2];
        stages[0].samples.push(measure(|| {
            for read in &feed.reads {
                decode_read(&feed, read, &mut out, &mut counts);
                out.clear();
            }
        }));
        assert_eq!(counts, [events as u64, 0], "every record decodes");

        stages[1].samples.push(measure(|| {
            for batch in &mut decoded {
                attributor.attribute(batch, Instant::now());
            }
        }));

        let mut ship = Ship::new();
        stages[2].samples.push(measure(|| {
            for batch in &decoded {
                ship.take(batch);
            }
            ship.finish();
        }));
        assert_eq!(ship.events, events as u64);

        // The pump: read, attribute, hand over (the Vec moves to the shipper and is dropped
        // there after batching).
        let mut ship = Ship::new();
        let mut batch = Vec::with_capacity(BATCH_MAX_EVENTS);
        let mut counts = [0u64; 2];
        stages[3].samples.push(measure(|| {
            for read in &feed.reads {
                decode_read(&feed, read, &mut batch, &mut counts);
                attributor.attribute(&mut batch, Instant::now());
                let handed = std::mem::take(&mut batch);
                ship.take(&handed);
                drop(handed);
            }
            ship.finish();
        }));
        assert_eq!(ship.events, events as u64);
        shipped = (ship.events, ship.bytes, ship.definitions);
    }
    let stats = attributor.stats();
    assert_eq!((stats.held, stats.missing), (0, 0));

    println!(
        "agent stream per round (one stream): {} events, {} bytes of batches and attribution \
         definitions ({} definitions): {:.1} bytes/event; target <= {TARGET_BYTES_PER_EVENT}: {}",
        shipped.0,
        shipped.1,
        shipped.2,
        ratio(shipped.1, shipped.0),
        if ratio(shipped.1, shipped.0) <= TARGET_BYTES_PER_EVENT {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "{:<12} {:>14} {:>18} {:>15} {:>15}",
        "stage", "CPU ns/event", "events/CPU-second", "wall ns/event", "wall events/s"
    );
    for stage in &stages {
        let (cpu, wall) = (stage.cpu_ns(events), stage.wall_ns(events));
        println!(
            "{:<12} {cpu:>14.1} {:>18.0} {wall:>15.1} {:>15.0}",
            stage.name,
            1e9 / cpu,
            1e9 / wall
        );
    }
    let chain = 1e9 / stages[3].cpu_ns(events);
    println!(
        "chained: {chain:.0} events per CPU-second; target >= {TARGET_PER_CPU_SECOND:.0}: {}",
        if chain >= TARGET_PER_CPU_SECOND {
            "met"
        } else {
            "NOT met"
        }
    );
    let agent = stages[0].cpu_ns(events) + stages[1].cpu_ns(events);
    let rate = 1e9 / agent;
    println!(
        "decode + attribution: {agent:.1} ns/event = {rate:.0} events per CPU-second; target >= \
         {TARGET_PER_CPU_SECOND:.0}: {}",
        if rate >= TARGET_PER_CPU_SECOND {
            "met"
        } else {
            "NOT met"
        }
    );
    println!("(medians over {rounds} rounds; CPU time of this thread)");
    drop(attributor);
    drop(tree);
}
