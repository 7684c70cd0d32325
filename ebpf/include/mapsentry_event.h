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

/* Rules one cgroup's set holds: the bound on the Enforce rules of a policy set. */
#define MS_RULES_PER_SET 32

/* What a rule's conditions beyond the call's own arguments read (ms_rule.needs). */
enum ms_need {
	MS_NEED_COMM = 1,  /* the caller's command name (comm classes) */
	MS_NEED_EXE = 2,   /* the caller's executable (path classes) */
	MS_NEED_FILE = 4,  /* the call has a file (a call without one never matches) */
	MS_NEED_KINDS = 8, /* the file's kind: memfd, shm, deleted */
	MS_NEED_PATH = 16, /* the file's path (path classes) */
};

/* File kinds (ms_rule.file_care / file_want), as the agent's decoder names them. */
enum ms_file_kind {
	MS_FK_MEMFD = 1,   /* unlinked, on tmpfs or hugetlbfs, path /memfd:NAME */
	MS_FK_SHM = 2,     /* on tmpfs under /dev/shm/ */
	MS_FK_DELETED = 4, /* unlinked and not a memfd */
};

/* A rule's protection and flags conditions, then the rest. Classes: a rule names a class of
 * command names (comm classes) or of paths (path classes) by its number, 1..64 (0: no
 * condition); the kernel looks up the classes the caller's comm, its executable and the call's
 * file belong to (see enforce.h). */
struct ms_rule {
	__u64 prot_all;   /* prot has all these bits */
	__u64 prot_any;   /* prot has one of these bits (0: no condition) */
	__u64 flags_all;  /* flags has all these bits */
	__u64 flags_any;  /* with flags_any_given: flags has one of these bits, or ... */
	__u64 min_length; /* length at least this */
	__u32 rule_id;    /* the agent's name for (policy, rule), echoed in the record */
	__u16 syscalls;   /* bit (1 << enum ms_syscall) per syscall concerned (0: all) */
	__u8 mapping;     /* enum ms_mapping */
	__u8 action;      /* enum ms_action */
	__u16 types_all;  /* mapping types (bit 1 << (flags & 0xf)) flagsAll allows; 0xffff: any */
	__u16 types_any;  /* ... its mapping type is one of these */
	__u8 flags_any_given;
	__u8 needs;       /* enum ms_need bits */
	__u8 comm;        /* comm class the caller's command name is in */
	__u8 exe;         /* path class the caller's executable is in */
	__u8 path;        /* path class the file is in */
	__u8 not_path;    /* path class the file is not in */
	__u8 except_comm; /* the exception holds when the comm is in this class (0: no part) */
	__u8 except_exe;  /* ... and the executable in this one; both 0: no exception */
	__u8 file_care;   /* enum ms_file_kind bits with a condition */
	__u8 file_want;   /* their required values */
	__u8 pad[2];
};

/* The rules for one cgroup (map `enforce`, key: cgroup id; key 0: every process). */
struct ms_rule_set {
	__u32 count;   /* rules in use, at most MS_RULES_PER_SET */
	__u32 version; /* the policy set version these rules come from */
	__u32 generation; /* the class tables the rules' classes refer to (table: generation & 1) */
	__u32 pad;
	struct ms_rule rules[MS_RULES_PER_SET];
};

/* Patterns per class table; the agent keeps two tables (the sets of the previous and the
 * current class generation), so a set switches atomically. */
#define MS_PATTERNS_PER_TABLE 64
/* Bytes of a path trie key: the table (generation & 1), then up to 255 bytes of path. */
#define MS_PATH_KEY_BYTES 256

/* What lies between a pattern's prefix and suffix (ms_pattern.middle). */
enum ms_middle {
	MS_MIDDLE_EXACT = 0,     /* nothing: the path is the prefix */
	MS_MIDDLE_COMPONENT = 1, /* bytes without '/': the path has exactly `slashes` slashes */
	MS_MIDDLE_ANY = 2,       /* anything */
};

/* One compiled glob pattern (map `path_patterns`, index table * 64 + bit). Its prefix and its
 * reversed suffix are keys of the tries `path_prefixes` / `path_suffixes`. */
struct ms_pattern {
	__u16 prefix_len;
	__u16 suffix_len;
	__u8 middle;  /* enum ms_middle */
	__u8 slashes; /* '/' in prefix and suffix */
	__u16 pad;
	__u64 classes; /* path classes (bit class - 1) this pattern belongs to */
};

/* Key of the path tries (BPF_MAP_TYPE_LPM_TRIE). */
struct ms_path_key {
	__u32 prefixlen; /* bits */
	__u8 data[MS_PATH_KEY_BYTES];
};

/* The comm classes of one command name (map `comm_classes`, key: the name, NUL-padded to 16
 * bytes), per table. */
struct ms_comm_classes {
	__u64 classes[2];
};

/* Bits of ms_enforce_state.flags. */
#define MS_STATE_EXE 1 /* some rule reads the executable: exec tracking computes classes */

/* The agent's enforcement state (map `enforce_state`, one element). */
struct ms_enforce_state {
	__u32 sets; /* rule sets in `enforce`; 0: the mmap entry path skips enforcement */
	__u32 generation; /* the newest class tables */
	__u32 flags; /* MS_STATE_* */
	__u32 pad;
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
