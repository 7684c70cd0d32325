/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/* Every map and load-time setting of the capture programs, in one place. */
#ifndef MAPSENTRY_MAPS_H
#define MAPSENTRY_MAPS_H

#include "mapsentry_event.h"

/* Settings the agent writes before load (EbpfLoader::override_global). */
const volatile __u32 self_tgid = 0;   /* the agent's own process: never reported */
const volatile __u32 filter_tgid = 0; /* report only this process (0: every process) */
const volatile __u64 filter_prot_any = 0; /* report only calls with one of these prot bits (0: all) */
/* Wake the reader only once this many bytes wait in the ring buffer (0: at every record); the
 * reader also drains on a short timer, which bounds the latency of a quiet stream. */
const volatile __u64 wakeup_bytes = 0;

/* A call between entry and exit: its arguments, kept per thread. */
struct ms_pending {
	__u64 ts_boot_ns;
	__u64 cgroup_id; /* the caller's, read once at entry for the rules and the record */
	__u64 args[6];
	__u16 syscall; /* enum ms_syscall; 0: no call parked */
	__u16 args_unreadable;
	__u16 action;    /* enum ms_action taken at entry */
	__u16 prev_prot; /* mprotect: the mapping's PROT_* bits before the call */
	__u32 rule_id;
};

/* Enforcement rules per cgroup id, written by the agent (key 0: every process). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct ms_rule_set);
} enforce SEC(".maps");

/* How many rule sets `enforce` holds (one element), kept by the agent with them. While it is 0,
 * the tracepoint-mode entry program leaves mmap and mmap2 calls to the exit program alone. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} enforce_sets SEC(".maps");

/* The mapping call each thread is inside, parked between its entry and exit: task storage,
 * created at a thread's first reported call and freed with the thread. It replaced an LRU hash
 * keyed by tid whose update and delete cost ~300 ns per call (bpf_stats); a storage lookup is a
 * few loads through the task's own cache. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ms_pending);
} pending SEC(".maps");

/* Records for the agent. The agent sets the size (bytes, a power of two) before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} events SEC(".maps");

/* Per-CPU counters, indexed by enum ms_counter: nothing is lost without being counted. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MS_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Scratch space for one record and its path walk; too large for the 512-byte BPF stack.
 * BPF programs run with migration, not preemption, disabled: on a preemptible kernel a second
 * thread's exit program can run on the same CPU while the first is mid-record. So each CPU has
 * MS_SCRATCH_SLOTS slots, each taken with a compare-and-swap on `busy` and given back after
 * the record is out; a record that finds every slot taken is counted as dropped. */
#define MS_SCRATCH_SLOTS 4

struct ms_scratch {
	__u64 busy; /* 64 bits: the BPF target's atomics before -mcpu=v3 */
	struct ms_event event;
	/* Path walk state. Kept in the map value, not in registers, on purpose: the verifier does
	 * not track map contents, so every loop iteration starts from the same abstract state and
	 * is verified once instead of once per path through the previous iterations. */
	__u32 walk_pos;
	__u32 walk_done;
	char path[2 * MS_PATH_MAX]; /* the walk writes backwards into the first half */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MS_SCRATCH_SLOTS);
	__type(key, __u32);
	__type(value, struct ms_scratch);
} scratch SEC(".maps");

#endif /* MAPSENTRY_MAPS_H */
