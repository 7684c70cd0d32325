/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Everything the kernel programs and the agent exchange: one struct ms_event per captured call,
 * and the enforcement rules the agent writes (struct ms_rule_set). This header is the single
 * definition; agent/src/events/wire.rs and agent/src/enforce/wire.rs mirror it, and a test
 * (e2e/tests/wire_layout.rs) compares the layouts against the BTF of the built object.
 *
 * Records have variable length: the fixed part up to `path`, then path_len bytes of path
 * (no terminating NUL). Change a field only together with the Rust mirror.
 */
#ifndef MAPSENTRY_EVENT_H
#define MAPSENTRY_EVENT_H

#define MS_COMM_LEN 16
/* Bytes reserved for a file path, a power of two; paths keep at most MS_PATH_MAX - 1 bytes. */
#define MS_PATH_MAX 512

/* Which system call made the mapping. */
enum ms_syscall {
	MS_SYSCALL_MMAP = 1,     /* native 64-bit mmap (x86_64 nr 9) */
	MS_SYSCALL_MMAP2 = 2,    /* ia32 compat mmap2 (i386 nr 192), offset in 4096-byte pages */
	MS_SYSCALL_OLD_MMAP = 3, /* ia32 compat old_mmap (i386 nr 90), arguments in a user struct */
	MS_SYSCALL_MPROTECT = 4, /* mprotect or pkey_mprotect (x86_64 nr 10 / 329, i386 nr 125 /
				  * 380): addr, length, prot only */
};

/* Bits of ms_event.file_flags. */
enum ms_file_flag {
	MS_FILE_PRESENT = 1,        /* file-backed: inode, dev, fs_magic and path are valid */
	MS_FILE_UNLINKED = 2,       /* the inode has no links left (deleted file, memfd) */
	MS_FILE_PATH_TRUNCATED = 4, /* the path walk hit its bound; path holds the tail */
	MS_ARGS_UNREADABLE = 8,     /* old_mmap: the user argument struct could not be read */
};

/* Indexes of the per-CPU counter array `counters`. */
enum ms_counter {
	MS_COUNTER_SEEN = 0,     /* calls the report filters kept (entered while attached) */
	MS_COUNTER_FILTERED = 1, /* calls the in-kernel report filter left out */
	MS_COUNTER_DROPPED = 2,  /* records lost: ring buffer full (or, rarely, every scratch slot busy) */
	MS_COUNTER_MAX = 3,
};

/* What enforcement did to a call (ms_event.action, ms_rule.action). */
enum ms_action {
	MS_ACTION_NONE = 0,
	MS_ACTION_KILL = 1, /* SIGKILL at syscall entry: the caller never runs with the mapping */
	MS_ACTION_DENY = 2, /* -EPERM from the BPF LSM hooks mmap_file / file_mprotect */
};

/* Which mappings a rule concerns (ms_rule.mapping). */
enum ms_mapping {
	MS_MAPPING_ANY = 0,
	MS_MAPPING_ANONYMOUS = 1,
	MS_MAPPING_FILE = 2,
};

/* ms_event.prev_prot: the mapping mprotect changes maps a file (else it is anonymous). */
#define MS_VMA_FILE 0x100

#define MS_RULES_PER_SET 8

/* One enforcement rule: a call matches when every condition set here holds. */
struct ms_rule {
	__u64 prot_all;   /* prot has all these bits */
	__u64 prot_any;   /* prot has one of these bits (0: no condition) */
	__u64 flags_all;  /* flags has all these bits */
	__u64 flags_any;  /* flags has one of these bits (0: no condition) */
	__u64 min_length; /* length at least this */
	__u32 rule_id;    /* the agent's name for (policy, rule), echoed in the record */
	__u16 syscalls;   /* bit (1 << enum ms_syscall) per syscall concerned (0: all) */
	__u8 mapping;     /* enum ms_mapping */
	__u8 action;      /* enum ms_action */
};

/* The rules for one cgroup (map `enforce`, key: cgroup id; key 0: every process). */
struct ms_rule_set {
	__u32 count; /* rules in use, at most MS_RULES_PER_SET */
	__u32 version; /* the policy set version these rules come from */
	struct ms_rule rules[MS_RULES_PER_SET];
};

struct ms_event {
	__u64 ts_boot_ns; /* bpf_ktime_get_boot_ns() at syscall entry, or exit for a call read
			   * whole there (ms_on_exit) */
	__u64 cgroup_id;  /* cgroup v2 id of the caller */
	__u64 addr;       /* the six arguments, as passed */
	__u64 length;
	__u64 prot;
	__u64 flags;
	__u64 pgoffset; /* pages: as passed for mmap2, derived (offset / 4096) for mmap */
	__u64 offset;   /* bytes: as passed for mmap, derived (pgoffset * 4096) for mmap2 */
	__s64 ret;      /* mapped address or -errno */
	__u64 inode;
	__u64 fs_magic;
	__s32 fd;
	__u32 dev; /* kernel encoding: major << 20 | minor */
	__u32 pid;
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 file_flags;
	__u16 syscall;
	__u16 path_len;
	__u32 rule_id; /* the matching enforcement rule, when action is not MS_ACTION_NONE */
	__u16 action;    /* enum ms_action */
	__u16 prev_prot; /* mprotect: PROT_* bits of the mapping at addr before the call,
			  * | MS_VMA_FILE when it maps a file */
	char comm[MS_COMM_LEN];
	char path[MS_PATH_MAX];
};

#endif /* MAPSENTRY_EVENT_H */
