/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Files and their paths: the per-CPU scratch slots, the path walk (up to the root of the
 * caller's mount namespace), and the path classes of a file (which glob patterns of the agent's
 * class tables its path matches), shared by the record (capture.h) and enforcement (enforce.h).
 */
#ifndef MAPSENTRY_PATH_H
#define MAPSENTRY_PATH_H

#include "vmlinux_subset.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "mapsentry_event.h"
#include "maps.h"

#define MS_NAME_MAX 255 /* longest dentry name */
#define MS_PATH_COMPONENTS 32
#define MS_TMPFS_MAGIC 0x01021994
#define MS_HUGETLBFS_MAGIC 0x958458f6

/* A free scratch slot of this CPU, taken (see struct ms_scratch), or NULL when all are busy. */
static __always_inline struct ms_scratch *ms_take_scratch_slot(__u32 slot)
{
	struct ms_scratch *s = bpf_map_lookup_elem(&scratch, &slot);

	if (s && __sync_val_compare_and_swap(&s->busy, 0, 1) == 0)
		return s;
	return NULL;
}

static __always_inline struct ms_scratch *ms_take_scratch(void)
{
	struct ms_scratch *s;

	/* Unrolled by hand: MS_SCRATCH_SLOTS tries. */
	s = ms_take_scratch_slot(0);
	if (!s)
		s = ms_take_scratch_slot(1);
	if (!s)
		s = ms_take_scratch_slot(2);
	if (!s)
		s = ms_take_scratch_slot(3);
	return s;
}

static __always_inline void ms_give_scratch(struct ms_scratch *s)
{
	__sync_lock_test_and_set(&s->busy, 0);
}

/* Prepend "/name" for each dentry of `file` up to the root of the caller's mount namespace,
 * crossing mount points, at most MS_PATH_COMPONENTS names. The walk writes backwards into
 * s->path, which then holds the path in s->path[walk_pos .. MS_PATH_MAX - 1); walk_done says
 * it reached the root (else the path is truncated: the tail), walk_slashes counts its '/'. */
static __always_inline void ms_walk(struct ms_scratch *s, struct file *file)
{
	struct dentry *dentry = BPF_CORE_READ(file, f_path.dentry);
	struct vfsmount *vfsmnt = BPF_CORE_READ(file, f_path.mnt);
	struct mount *mnt = (void *)vfsmnt - bpf_core_field_offset(struct mount, mnt);
	__u32 pos, len;
	int i;

	s->walk_pos = MS_PATH_MAX - 1;
	s->walk_done = 0;
	s->walk_slashes = 0;
	for (i = 0; i < MS_PATH_COMPONENTS; i++) {
		struct dentry *mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
		struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
		const unsigned char *name;

		if (dentry == mnt_root) {
			struct mount *mnt_parent = BPF_CORE_READ(mnt, mnt_parent);

			if (mnt == mnt_parent) {
				s->walk_done = 1; /* the root of the namespace */
				break;
			}
			dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = mnt_parent;
			vfsmnt = (void *)mnt + bpf_core_field_offset(struct mount, mnt);
			continue;
		}
		len = BPF_CORE_READ(dentry, d_name.len);
		name = BPF_CORE_READ(dentry, d_name.name);
		pos = s->walk_pos;
		if (len > MS_NAME_MAX || len + 1 > pos)
			break; /* truncated: keep the tail we have */
		pos -= len;
		bpf_probe_read_kernel(&s->path[pos & (MS_PATH_MAX - 1)], len & MS_NAME_MAX, name);
		pos -= 1;
		s->path[pos & (MS_PATH_MAX - 1)] = '/';
		s->walk_pos = pos;
		s->walk_slashes += 1;
		if (dentry == parent) {
			s->walk_done = 1; /* a pseudo file (memfd, anon inode): no parent, name only */
			break;
		}
		dentry = parent;
	}
	if (s->walk_done && s->walk_pos == MS_PATH_MAX - 1) {
		s->walk_pos = MS_PATH_MAX - 2; /* the root directory itself */
		s->path[MS_PATH_MAX - 2] = '/';
		s->walk_slashes = 1;
	}
}

/* The walked path's length. */
static __always_inline __u32 ms_walked_len(const struct ms_scratch *s)
{
	return (MS_PATH_MAX - 1 - (s->walk_pos & (MS_PATH_MAX - 1))) & (MS_PATH_MAX - 1);
}

/* Whether the walked path starts with the `n` bytes of `lit` (n at most 16). */
static __always_inline bool ms_path_starts_with(const struct ms_scratch *s, const char *lit, __u32 n)
{
	__u32 pos = s->walk_pos & (MS_PATH_MAX - 1);
	int i;

	if (ms_walked_len(s) < n)
		return false;
#pragma unroll
	for (i = 0; i < 16; i++) {
		if (i >= n)
			break;
		if (s->path[(pos + i) & (2 * MS_PATH_MAX - 1)] != lit[i])
			return false;
	}
	return true;
}

/* The path classes (under table `table`) of the path just walked into `s` (see struct
 * ms_pattern): one trie lookup for the patterns whose prefix starts the path, one of the reversed
 * path for those whose suffix ends it, then each candidate's length and slash count. */
static __always_inline __u64 ms_match_walked(struct ms_scratch *s, __u32 table)
{
	__u32 pos = s->walk_pos & (MS_PATH_MAX - 1), len = ms_walked_len(s), n, i;
	__u64 *found, candidates, classes = 0;

	n = len < MS_PATH_KEY_BYTES - 1 ? len : MS_PATH_KEY_BYTES - 1;
	s->key.prefixlen = (n + 1) * 8;
	s->key.data[0] = table;
	bpf_probe_read_kernel(&s->key.data[1], n & (MS_PATH_KEY_BYTES - 1), &s->path[pos]);
	found = bpf_map_lookup_elem(&path_prefixes, &s->key);
	if (!found || !*found)
		return 0;
	candidates = *found;
	for (i = 0; i < MS_PATH_KEY_BYTES - 1; i++) {
		if (i >= n)
			break;
		s->key.data[(1 + i) & (MS_PATH_KEY_BYTES - 1)] =
			s->path[(MS_PATH_MAX - 2 - i) & (2 * MS_PATH_MAX - 1)];
	}
	found = bpf_map_lookup_elem(&path_suffixes, &s->key);
	if (!found)
		return 0;
	candidates &= *found;
	for (i = 0; i < MS_PATTERNS_PER_TABLE; i++) {
		__u32 index = table * MS_PATTERNS_PER_TABLE + i;
		struct ms_pattern *pattern;

		if (!((candidates >> i) & 1))
			continue;
		pattern = bpf_map_lookup_elem(&path_patterns, &index);
		if (!pattern || len < (__u32)pattern->prefix_len + pattern->suffix_len)
			continue;
		if (pattern->middle == MS_MIDDLE_EXACT && len != pattern->prefix_len)
			continue;
		if (pattern->middle == MS_MIDDLE_COMPONENT && s->walk_slashes != pattern->slashes)
			continue;
		classes |= pattern->classes;
	}
	return classes;
}

/* What enforcement knows of a file (ms_file_facts). */
struct ms_file_facts {
	__u64 classes; /* path classes */
	__u32 kinds;   /* enum ms_file_kind bits */
	__u8 path_unknown;  /* the path was not read whole: its classes are unknown */
	__u8 kinds_unknown; /* no scratch slot was free: its kinds are unknown */
	__u8 pad[2];
};

/*
 * The kinds (with MS_NEED_KINDS in `needs`) and the path classes under table `table` (with
 * MS_NEED_PATH) of the file at `file_ptr` (a struct file *), as the agent's decoder would name
 * them from the record. A global function: the verifier checks it once per program, not at each
 * of its callers (the executable and the call's file, in every entry program).
 */
__noinline int ms_file_facts(__u64 file_ptr, __u32 table, __u32 needs, struct ms_file_facts *out)
{
	struct file *file = (struct file *)file_ptr;
	struct inode *inode;
	struct ms_scratch *s;
	bool unlinked, tmpfs;
	__u64 magic;

	if (!out || !file)
		return 0;
	inode = BPF_CORE_READ(file, f_inode);
	unlinked = BPF_CORE_READ(inode, i_nlink) == 0;
	magic = BPF_CORE_READ(inode, i_sb, s_magic);
	tmpfs = magic == MS_TMPFS_MAGIC;
	/* memfd and shm are named by the path: without one of them possible, no walk for kinds. */
	if (!(needs & MS_NEED_PATH) && !unlinked && !tmpfs)
		return 0;
	s = ms_take_scratch();
	if (!s) {
		out->path_unknown = 1;
		out->kinds_unknown = 1;
		return 0;
	}
	ms_walk(s, file);
	if (needs & MS_NEED_KINDS) {
		bool memfd = unlinked && (tmpfs || magic == MS_HUGETLBFS_MAGIC) &&
			     ms_path_starts_with(s, "/memfd:", 7);

		if (memfd)
			out->kinds |= MS_FK_MEMFD;
		else if (unlinked)
			out->kinds |= MS_FK_DELETED;
		if (tmpfs && ms_path_starts_with(s, "/dev/shm/", 9))
			out->kinds |= MS_FK_SHM;
	}
	if (needs & MS_NEED_PATH) {
		if (s->walk_done)
			out->classes = ms_match_walked(s, table & 1);
		else
			out->path_unknown = 1;
	}
	ms_give_scratch(s);
	return 0;
}

#endif /* MAPSENTRY_PATH_H */
