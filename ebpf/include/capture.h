/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Capture logic shared by every attach mode.
 *
 * Entry: decode the caller's arguments from its saved user registers (the same in every mode)
 * and park them per thread in `pending`. Exit: join the return value, resolve the file behind a
 * file-backed mapping, and copy one record into the ring buffer. A full ring buffer is counted
 * per CPU, never silent.
 */
#ifndef MAPSENTRY_CAPTURE_H
#define MAPSENTRY_CAPTURE_H

#include "vmlinux_subset.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "mapsentry_event.h"
#include "maps.h"
#include "path.h"
#include "enforce.h"

#define X86_64_NR_MMAP 9
#define X86_64_NR_MPROTECT 10
#define X86_64_NR_PKEY_MPROTECT 329
#define IA32_NR_OLD_MMAP 90
#define IA32_NR_MPROTECT 125
#define IA32_NR_PKEY_MPROTECT 380
#define IA32_NR_MMAP2 192
#define TS_COMPAT 0x0002 /* thread_info.status: the task is in an ia32 system call */
#define MS_MAP_ANONYMOUS 0x20
#define MS_PAGE_SHIFT 12 /* mmap2 counts its offset in 4096-byte units on every architecture */

/*
 * Field reads. Where the program holds BTF-typed pointers the verifier tracks (tp_btf and fentry
 * programs: `btf` true), a field is one plain load, which the verifier turns into a fault-safe
 * PROBE_MEM load. Elsewhere (raw_tp, kprobe) it goes through bpf_probe_read_kernel, a helper
 * call: profiling (bpf_stats) showed eight such calls made an mmap entry cost ~700 ns here.
 * `btf` is a constant at every call site, so clang keeps only one of the two branches.
 */
#define MS_READ(btf, src, field) ((btf) ? (src)->field : BPF_CORE_READ(src, field))

/* The current task: a BTF pointer where `btf`, else a plain one for BPF_CORE_READ. */
static __always_inline struct task_struct *ms_current_task(bool btf)
{
	return btf ? bpf_get_current_task_btf() : (struct task_struct *)bpf_get_current_task();
}

/* Whether the current task is in an ia32 system call. */
static __always_inline bool ms_in_compat(bool btf)
{
	struct task_struct *task = ms_current_task(btf);

	return MS_READ(btf, task, thread_info.status) & TS_COMPAT;
}

static __always_inline void ms_count(__u32 counter)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &counter);

	/* Atomic although the slot is per CPU: where the kernel runs the program preemptible
	 * (6.18's syscall tracepoints), another task on this CPU can run it mid-increment, and a
	 * plain += lost counts (seen short of the records delivered, caught by the e2e tests). */
	if (value)
		__sync_fetch_and_add(value, 1);
}

/* Cheap first test, run on every system call in tracepoint mode. */
static __always_inline bool ms_is_mmap_nr(long nr)
{
	return nr == X86_64_NR_MMAP || nr == X86_64_NR_MPROTECT || nr == X86_64_NR_PKEY_MPROTECT ||
	       nr == IA32_NR_MMAP2 || nr == IA32_NR_OLD_MMAP || nr == IA32_NR_MPROTECT ||
	       nr == IA32_NR_PKEY_MPROTECT;
}

/* Which mapping call `nr` is for the current task, or 0. Numbers mean different calls in the
 * native and the ia32 tables (ia32 9 is link, x86_64 192 is lgetxattr), hence TS_COMPAT. */
static __always_inline __u16 ms_syscall_of(long nr, bool btf)
{
	if (!ms_in_compat(btf)) {
		if (nr == X86_64_NR_MMAP)
			return MS_SYSCALL_MMAP;
		if (nr == X86_64_NR_MPROTECT || nr == X86_64_NR_PKEY_MPROTECT)
			return MS_SYSCALL_MPROTECT;
		return 0;
	}
	if (nr == IA32_NR_MPROTECT || nr == IA32_NR_PKEY_MPROTECT)
		return MS_SYSCALL_MPROTECT;
	if (nr == IA32_NR_MMAP2)
		return MS_SYSCALL_MMAP2;
	if (nr == IA32_NR_OLD_MMAP)
		return MS_SYSCALL_OLD_MMAP;
	return 0;
}

#define MS_VM_PROT_BITS 0x7 /* VM_READ | VM_WRITE | VM_EXEC, the same bits as PROT_* */

/* What mprotect's entry reads of the mapping it changes. */
struct ms_vma_info {
	__u64 file; /* struct file * */
	__u16 prot;
};

static long ms_vma_prot_cb(struct task_struct *task, struct vm_area_struct *vma, void *data)
{
	struct ms_vma_info *info = data;
	struct file *file = BPF_CORE_READ(vma, vm_file);

	info->prot = BPF_CORE_READ(vma, vm_flags) & MS_VM_PROT_BITS;
	if (file)
		info->prot |= MS_VMA_FILE;
	info->file = (__u64)file;
	return 0;
}

/* PROT_* bits (| MS_VMA_FILE) of the caller's mapping at `addr` (0 when there is none) and its
 * file, into `p`. */
static __always_inline void ms_vma_prot(__u64 addr, struct ms_pending *p)
{
	struct ms_vma_info info = {};

	bpf_find_vma(bpf_get_current_task_btf(), addr, ms_vma_prot_cb, &info, 0);
	p->prev_prot = info.prot;
	p->vma_file = info.file;
}

/* Read the six arguments as the caller passed them, from its user registers. Each register is
 * read on its own: clang 14 otherwise emits ctx accesses the verifier refuses. */
static __always_inline void ms_read_args(struct pt_regs *regs, struct ms_pending *p, bool btf)
{
	if (p->syscall == MS_SYSCALL_MMAP) {
		/* x86_64 syscall ABI: rdi, rsi, rdx, r10, r8, r9 */
		p->args[0] = MS_READ(btf, regs, di);
		p->args[1] = MS_READ(btf, regs, si);
		p->args[2] = MS_READ(btf, regs, dx);
		p->args[3] = MS_READ(btf, regs, r10);
		p->args[4] = MS_READ(btf, regs, r8);
		p->args[5] = MS_READ(btf, regs, r9);
	} else if (p->syscall == MS_SYSCALL_MPROTECT) {
		/* mprotect(start, len, prot): the remaining "arguments" read as no flags, no file */
		bool compat = ms_in_compat(btf);

		p->args[0] = compat ? (__u32)MS_READ(btf, regs, bx) : MS_READ(btf, regs, di);
		p->args[1] = compat ? (__u32)MS_READ(btf, regs, cx) : MS_READ(btf, regs, si);
		p->args[2] = compat ? (__u32)MS_READ(btf, regs, dx) : MS_READ(btf, regs, dx);
		p->args[3] = 0;
		p->args[4] = (__u64)-1;
		p->args[5] = 0;
		ms_vma_prot(p->args[0], p);
	} else if (p->syscall == MS_SYSCALL_MMAP2) {
		/* i386 ABI: ebx, ecx, edx, esi, edi, ebp; 32-bit values */
		p->args[0] = (__u32)MS_READ(btf, regs, bx);
		p->args[1] = (__u32)MS_READ(btf, regs, cx);
		p->args[2] = (__u32)MS_READ(btf, regs, dx);
		p->args[3] = (__u32)MS_READ(btf, regs, si);
		p->args[4] = (__u32)MS_READ(btf, regs, di);
		p->args[5] = (__u32)MS_READ(btf, regs, bp);
	} else {
		/* old_mmap: ebx points to struct mmap_arg_struct, six 32-bit fields */
		__u32 user_args[6] = {};
		__u32 ptr = (__u32)MS_READ(btf, regs, bx);

		if (bpf_probe_read_user(user_args, sizeof(user_args), (void *)(unsigned long)ptr)) {
			p->args_unreadable = 1;
			return;
		}
		p->args[0] = user_args[0];
		p->args[1] = user_args[1];
		p->args[2] = user_args[2];
		p->args[3] = user_args[3];
		p->args[4] = user_args[4];
		p->args[5] = user_args[5];
	}
}

/* Whether the report filters (`filter_tgid`, `filter_prot_any`) leave this call out. */
static __always_inline bool ms_report_filtered(__u64 pid_tgid, const struct ms_pending *p)
{
	if (filter_tgid && (__u32)(pid_tgid >> 32) != filter_tgid)
		return true;
	return filter_prot_any && !(p->args[2] & filter_prot_any);
}

/* Whether the exit program can read this call whole: mmap and mmap2 take their six arguments in
 * registers the call leaves untouched, so the tracepoint-mode exit reads them from the saved user
 * registers and nothing has to be parked. (mprotect needs the mapping's protection from before
 * the call, old_mmap a user struct; kprobe and fentry exits have no user registers at hand.) */
static __always_inline bool ms_read_at_exit(__u16 syscall)
{
	return syscall == MS_SYSCALL_MMAP || syscall == MS_SYSCALL_MMAP2;
}

/* Syscall entry, any mode: `regs` are the caller's saved user registers, `nr` its call number;
 * `btf`: see MS_READ. `exit_reads`: the exit program is given the registers too (tracepoint
 * modes), so calls it can read whole (ms_read_at_exit) are parked here only when an enforcement
 * rule judged them. That halves the work of an unenforced mmap: parking costs a storage
 * lookup, a second read of the clock and the cgroup, and a counter, per call. */
static __always_inline int ms_on_enter(struct pt_regs *regs, long nr, bool btf, bool exit_reads)
{
	struct ms_pending p = {};
	struct ms_pending *parked;
	__u64 pid_tgid;
	bool deferred;

	if (!ms_is_mmap_nr(nr))
		return 0;
	p.syscall = ms_syscall_of(nr, btf);
	if (!p.syscall)
		return 0;
	deferred = exit_reads && ms_read_at_exit(p.syscall);
	if (deferred && !ms_enforcing())
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	if ((__u32)(pid_tgid >> 32) == self_tgid)
		return 0;
	p.cgroup_id = bpf_get_current_cgroup_id();
	ms_read_args(regs, &p, btf);
	/* Enforcement first, for every process; an enforced call is always reported. */
	if (!ms_enforce(&p)) {
		if (deferred)
			return 0; /* the exit program filters and reports it */
		if (ms_report_filtered(pid_tgid, &p)) {
			ms_count(MS_COUNTER_FILTERED);
			return 0;
		}
	}
	p.ts_boot_ns = bpf_ktime_get_boot_ns();
	/* Counted after the filters: for the calls it reports, a capture's `seen` then equals
	 * records delivered + dropped exactly, however busy other processes are. */
	ms_count(MS_COUNTER_SEEN);
	parked = bpf_task_storage_get(&pending, bpf_get_current_task_btf(), 0,
				      BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!parked) {
		/* No memory for the thread's slot, or the storage is busy on this CPU (a program
		 * nested in another storage operation): the record is lost, and counted. */
		ms_count(MS_COUNTER_DROPPED);
		return 0;
	}
	/* This thread's previous call is still parked: its exit program never ran, so its record
	 * is lost. Count it. It happens in kprobe mode: a kretprobe has max(10, 2 * CPUs)
	 * instances, and threads waiting on the mmap lock inside the hooked function hold them. */
	if (parked->syscall)
		ms_count(MS_COUNTER_DROPPED);
	*parked = p;
	return 0;
}

/* The path of `file` into the record: walked (path.h), then copied. */
static __always_inline void ms_walk_path(struct ms_scratch *s, struct file *file)
{
	struct ms_event *e = &s->event;
	__u32 pos, len;

	ms_walk(s, file);
	if (!s->walk_done)
		e->file_flags |= MS_FILE_PATH_TRUNCATED;
	pos = s->walk_pos & (MS_PATH_MAX - 1);
	len = ms_walked_len(s);
	e->path_len = len;
	bpf_probe_read_kernel(e->path, len, &s->path[pos]);
}

/* Fill the file fields from the caller's descriptor table, if `fd` names an open file. */
static __always_inline void ms_fill_file(struct ms_scratch *s, __s32 fd)
{
	struct ms_event *e = &s->event;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *file = NULL;
	struct inode *inode;

	if (fd < 0 || (__u32)fd >= BPF_CORE_READ(fdt, max_fds))
		return;
	fds = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file)
		return;
	inode = BPF_CORE_READ(file, f_inode);
	e->file_flags |= MS_FILE_PRESENT;
	e->inode = BPF_CORE_READ(inode, i_ino);
	e->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	e->fs_magic = BPF_CORE_READ(inode, i_sb, s_magic);
	if (BPF_CORE_READ(inode, i_nlink) == 0)
		e->file_flags |= MS_FILE_UNLINKED;
	ms_walk_path(s, file);
}

/* Batch wake-ups: one per wakeup_bytes of records instead of one per record. Only the record
 * that makes the backlog cross the threshold wakes the reader: a reader already behind is awake
 * and drains until the buffer is empty, and a wake-up costs the mapping thread an irq_work
 * self-IPI (an MSR write, a VM exit under a hypervisor), which profiling showed on every record
 * once a slow reader kept the backlog above the threshold. Records below the threshold are drained
 * by the reader's timer (events::FLUSH_INTERVAL), or, once it has stopped the timer after a
 * quiet spell, wake it (ms_wake_reader). */
static __always_inline __u64 ms_wakeup_flag(__u32 size)
{
	__u64 avail;

	if (!wakeup_bytes)
		return 0;
	avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	return avail < wakeup_bytes && avail + size >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
								    : BPF_RB_NO_WAKEUP;
}

/* After a record is committed: wake a reader that stopped its drain timer (reader_idle set),
 * which no record below wakeup_bytes would otherwise wake. The check comes after the commit,
 * whose xchg is a full barrier, and the reader re-checks the buffer after setting the flag and
 * a fence, so of a record committed while the reader goes idle, one side sees the other: the
 * reader finds the record, or the program finds the flag. The wake-up is a discarded 8-byte
 * reservation (committing it with BPF_RB_FORCE_WAKEUP wakes the reader; readers skip discarded
 * records), as a committed record's flags are chosen before its commit. */
static __always_inline void ms_wake_reader(void)
{
	__u32 zero = 0;
	__u32 *idle;
	void *wake;

	idle = bpf_map_lookup_elem(&reader_idle, &zero);
	if (!idle || !*(volatile __u32 *)idle)
		return;
	*(volatile __u32 *)idle = 0;
	wake = bpf_ringbuf_reserve(&events, 8, 0);
	if (wake)
		bpf_ringbuf_discard(wake, BPF_RB_FORCE_WAKEUP);
}

/* Every field of a record but the file's, from the call `p`, the current task and its
 * `pid_tgid`; frees a parked call's slot. */
static __always_inline void ms_fill_record(struct ms_event *e, struct ms_pending *p, long ret,
					   __u64 pid_tgid, bool btf)
{
	struct task_struct *task;
	__u64 uid_gid;

	e->ts_boot_ns = p->ts_boot_ns;
	e->cgroup_id = p->cgroup_id;
	e->syscall = p->syscall;
	e->file_flags = p->args_unreadable ? MS_ARGS_UNREADABLE : 0;
	e->action = p->action;
	e->rule_id = p->rule_id;
	e->prev_prot = p->prev_prot;
	e->addr = p->args[0];
	e->length = p->args[1];
	e->prot = p->args[2];
	e->flags = p->args[3];
	e->fd = (__s32)p->args[4];
	if (p->syscall == MS_SYSCALL_MMAP2) {
		e->pgoffset = p->args[5];
		e->offset = p->args[5] << MS_PAGE_SHIFT;
	} else {
		e->offset = p->args[5];
		e->pgoffset = p->args[5] >> MS_PAGE_SHIFT;
	}
	p->syscall = 0; /* the slot is free again */

	task = ms_current_task(btf);
	e->ret = ret;
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	task = MS_READ(btf, task, real_parent);
	e->ppid = MS_READ(btf, task, tgid);
	uid_gid = bpf_get_current_uid_gid();
	e->uid = (__u32)uid_gid;
	e->gid = uid_gid >> 32;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->inode = 0;
	e->dev = 0;
	e->fs_magic = 0;
	e->path_len = 0;
}

/* Whether the parked call may map a file: only then is there a file to resolve and a path. */
static __always_inline bool ms_may_map_file(const struct ms_pending *p)
{
	return !(p->args[3] & MS_MAP_ANONYMOUS) && !p->args_unreadable && (__s32)p->args[4] >= 0;
}

/* Emit the record of call `p` (parked, or read at exit) that returned `ret`; frees a parked
 * call's slot. */
static __always_inline void ms_emit(struct ms_pending *p, long ret, __u64 pid_tgid, bool btf)
{
	struct ms_scratch *s;
	struct ms_event *e;
	__u64 wakeup;
	__u32 size;

	if (!ms_may_map_file(p)) {
		/* No file, so a fixed-size record: filled in place in the ring buffer, with no
		 * scratch slot (a lookup and two atomics) and no copy. */
		size = offsetof(struct ms_event, path);
		wakeup = ms_wakeup_flag(size);
		e = bpf_ringbuf_reserve(&events, size, 0);
		if (!e) {
			p->syscall = 0;
			ms_count(MS_COUNTER_DROPPED);
			return;
		}
		ms_fill_record(e, p, ret, pid_tgid, btf);
		bpf_ringbuf_submit(e, wakeup);
		ms_wake_reader();
		return;
	}
	s = ms_take_scratch();
	if (!s) {
		/* Every slot of this CPU is mid-record (nested preemption): the record is lost. */
		p->syscall = 0;
		ms_count(MS_COUNTER_DROPPED);
		return;
	}
	e = &s->event;
	ms_fill_record(e, p, ret, pid_tgid, btf);
	ms_fill_file(s, e->fd);
	size = offsetof(struct ms_event, path) + (e->path_len & (MS_PATH_MAX - 1));
	if (bpf_ringbuf_output(&events, e, size, ms_wakeup_flag(size)))
		ms_count(MS_COUNTER_DROPPED);
	else
		ms_wake_reader();
	ms_give_scratch(s);
}

/* Syscall exit, any mode: emit the parked call's record, or, given the caller's user registers
 * `regs` (tracepoint modes; NULL elsewhere) and its call number `nr`, read an unparked mmap or
 * mmap2 whole here (see ms_on_enter). `btf`: see MS_READ. The arguments are still in `regs`:
 * the call does not write them, and the exit tracepoint runs before a ptracer's exit stop and
 * while TS_COMPAT is still set for an ia32 call. */
static __always_inline int ms_on_exit(struct pt_regs *regs, long nr, long ret, bool btf)
{
	struct ms_pending *parked;
	struct ms_pending p = {};
	__u64 pid_tgid;

	parked = bpf_task_storage_get(&pending, bpf_get_current_task_btf(), 0, 0);
	if (parked && parked->syscall) {
		ms_emit(parked, ret, bpf_get_current_pid_tgid(), btf);
		return 0;
	}
	if (!regs)
		return 0;
	p.syscall = ms_syscall_of(nr, btf);
	if (!ms_read_at_exit(p.syscall))
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	if ((__u32)(pid_tgid >> 32) == self_tgid)
		return 0;
	ms_read_args(regs, &p, btf);
	if (ms_report_filtered(pid_tgid, &p)) {
		ms_count(MS_COUNTER_FILTERED);
		return 0;
	}
	ms_count(MS_COUNTER_SEEN);
	p.ts_boot_ns = bpf_ktime_get_boot_ns();
	p.cgroup_id = bpf_get_current_cgroup_id();
	ms_emit(&p, ret, pid_tgid, btf);
	return 0;
}

/* The caller's saved user registers, for hooks inside the kernel (kprobe, fentry). */
static __always_inline struct pt_regs *ms_user_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

#endif /* MAPSENTRY_CAPTURE_H */
