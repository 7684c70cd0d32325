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
	__u64 vma_file; /* mprotect: the file the mapping maps (struct file *), read at entry */
};

/* Enforcement rules per cgroup id, written by the agent (key 0: every process). Allocated per
 * element: a set is 2 KiB and most cgroups of a node have none. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct ms_rule_set);
} enforce SEC(".maps");

/* The agent's enforcement state (one element): how many rule sets `enforce` holds (while 0,
 * the tracepoint-mode entry program leaves mmap and mmap2 calls to the exit program alone), the
 * newest class tables, whether any rule reads the executable. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ms_enforce_state);
} enforce_state SEC(".maps");

/* Comm classes per command name (NUL-padded), for both class tables. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 512);
	__type(key, char[MS_COMM_LEN]);
	__type(value, struct ms_comm_classes);
} comm_classes SEC(".maps");

/* Path patterns: their prefixes (with the table byte in front) in one trie, their reversed
 * suffixes in another; each entry's value: the patterns (bit per pattern of its table) whose
 * prefix (suffix) it starts (ends) with, so one longest-prefix lookup gives every pattern whose
 * prefix starts a path. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 2 * MS_PATTERNS_PER_TABLE);
	__type(key, struct ms_path_key);
	__type(value, __u64);
} path_prefixes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 2 * MS_PATTERNS_PER_TABLE);
	__type(key, struct ms_path_key);
	__type(value, __u64);
} path_suffixes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * MS_PATTERNS_PER_TABLE);
	__type(key, __u32);
	__type(value, struct ms_pattern);
} path_patterns SEC(".maps");

/* Per thread, what the second pass of enforcement reads of the caller, under a class generation:
 * - the path classes of its executable: computed when the thread execs (sched_process_exec),
 *   copied to new threads and processes (sched_process_fork), and otherwise (threads that
 *   predate the agent, or a newer generation) from the task's own mm->exe_file at its first
 *   judged call;
 * - the comm classes of its command name, with the name they were looked up for (a thread's
 *   name seldom changes: one compare instead of a hash lookup per judged call).
 * Freed with the thread. */
struct ms_task_facts {
	__u64 exe;               /* path classes of the executable */
	__u32 exe_generation;    /* 0: not computed */
	__u32 exe_unknown;       /* the path could not be read whole: every class is unknown */
	__u64 comm_name[2];      /* the name (NUL-padded) comm_classes were looked up for */
	__u64 comm;              /* its comm classes */
	__u32 comm_generation;   /* 0: not looked up */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ms_task_facts);
} task_facts SEC(".maps");

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

/* Whether the reader sleeps without its drain timer (one element, 0 or 1; see ms_wake_reader).
 * The agent sets it after a quiet spell; the first record after that clears it and wakes it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} reader_idle SEC(".maps");

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
	__u32 walk_slashes; /* components walked: the path's '/' count */
	__u32 pad;
	char path[2 * MS_PATH_MAX]; /* the walk writes backwards into the first half */
	struct ms_path_key key;     /* a path trie lookup's key */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MS_SCRATCH_SLOTS);
	__type(key, __u32);
	__type(value, struct ms_scratch);
} scratch SEC(".maps");

#endif /* MAPSENTRY_MAPS_H */
