/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Enforcement at syscall entry, before the kernel maps anything: the caller's cgroup rules
 * (and the rules for every process, key 0) are matched against the call; a Kill rule sends
 * SIGKILL, which the caller receives before it returns to user space with the mapping; a Deny
 * decision is parked with the call and returned as -EPERM by the BPF LSM hooks the kernel calls
 * inside it (mmap_file, file_mprotect), where BPF LSM is active.
 * The decision never depends on the ring buffer or on the report filters.
 *
 * A set is judged in two passes. The first checks every rule's conditions on the call's own
 * arguments (prot, flags and mapping type, length, syscall, anonymous or file); most calls stop
 * there. For the rules left, the facts they read are looked up once: the caller's comm classes
 * (`comm_classes`, cached per thread) and its executable's path classes (`task_facts`, see
 * maps.h), the call's file
 * (the descriptor's for mmap, the mapping's for mprotect): its kinds and path classes. The
 * second pass takes the first of those rules whose remaining conditions hold, in the agent's
 * order (Deny rules first).
 *
 * Unknown facts fail closed: a path that could not be read whole (longer than the walk's
 * bounds) matches the rule's path and executable conditions (`pathGlobs`, `notPathGlobs`,
 * `executableGlobs`) and never its exception.
 */
#ifndef MAPSENTRY_ENFORCE_H
#define MAPSENTRY_ENFORCE_H

#include "vmlinux_subset.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "mapsentry_event.h"
#include "maps.h"
#include "path.h"

#define MS_SIGKILL 9
#define MS_ENFORCE_MAP_ANONYMOUS 0x20
#define MS_MAP_TYPE 0xf

#define MS_PROT_WRITE 0x2
#define MS_PROT_EXEC 0x4

/* The protection a rule judges. For mprotect: the new protection, plus the mapping's write
 * permission when execute is being granted and its execute permission when write is: turning
 * RW into RX (or RX into RW) counts as PROT_WRITE|PROT_EXEC, a downgrade counts as itself. */
static __always_inline __u64 ms_judged_prot(const struct ms_pending *p)
{
	__u64 prot = p->args[2];

	if (p->syscall != MS_SYSCALL_MPROTECT)
		return prot;
	if (prot & MS_PROT_EXEC)
		prot |= p->prev_prot & MS_PROT_WRITE;
	if (prot & MS_PROT_WRITE)
		prot |= p->prev_prot & MS_PROT_EXEC;
	return prot;
}

/* Whether the call concerns anonymous memory: by its flags for mmap, by the mapping it changes
 * for mprotect. */
static __always_inline bool ms_is_anonymous(const struct ms_pending *p)
{
	if (p->syscall == MS_SYSCALL_MPROTECT)
		return !(p->prev_prot & MS_VMA_FILE);
	return p->args[3] & MS_ENFORCE_MAP_ANONYMOUS;
}

/* Whether the call can have a file: an mmap of an open descriptor without MAP_ANONYMOUS, an
 * mprotect of a file mapping. */
static __always_inline bool ms_may_have_file(const struct ms_pending *p)
{
	if (p->syscall == MS_SYSCALL_MPROTECT)
		return p->vma_file;
	return !(p->args[3] & MS_ENFORCE_MAP_ANONYMOUS) && !p->args_unreadable &&
	       (__s32)p->args[4] >= 0;
}

/* The call as the first pass reads it. */
struct ms_call {
	__u64 prot;  /* judged (ms_judged_prot) */
	__u64 flags;
	__u64 length;
	__u16 syscall;
	__u8 anonymous;
	__u8 may_have_file;
	__u32 pad;
};

/*
 * First pass: the conditions on the call's own arguments. The passes' per-rule tests are global
 * functions: the verifier checks each once, and a loop over a set's rules then has one path per
 * rule instead of one per combination of earlier outcomes (it refused the inlined version with
 * 32 rules: a million instructions).
 */
__noinline int ms_rule_call_matches(const struct ms_rule *rule, const struct ms_call *call)
{
	__u16 type;

	if (!rule || !call)
		return 0;
	type = 1 << (call->flags & MS_MAP_TYPE);
	if ((call->prot & rule->prot_all) != rule->prot_all ||
	    (rule->prot_any && !(call->prot & rule->prot_any)))
		return 0;
	if ((call->flags & rule->flags_all) != rule->flags_all || !(rule->types_all & type))
		return 0;
	if (rule->flags_any_given && !(call->flags & rule->flags_any) && !(rule->types_any & type))
		return 0;
	if (call->length < rule->min_length)
		return 0;
	if (rule->syscalls && !(rule->syscalls & (1 << call->syscall)))
		return 0;
	if ((rule->mapping == MS_MAPPING_ANONYMOUS && !call->anonymous) ||
	    (rule->mapping == MS_MAPPING_FILE && call->anonymous))
		return 0;
	if ((rule->needs & MS_NEED_FILE) && !call->may_have_file)
		return 0;
	return rule->action != MS_ACTION_NONE;
}

/* What the second pass reads, looked up once per set. */
struct ms_facts {
	__u64 comm;    /* comm classes */
	__u64 exe;     /* path classes of the executable */
	struct ms_file_facts file;
	__u8 exe_unknown;
	__u8 has_file;
	__u8 pad[6];
};

/* Whether class `class` (1..64) is among `classes`. */
static __always_inline bool ms_in(__u64 classes, __u8 class)
{
	return (classes >> ((class - 1) & 63)) & 1;
}

/* Second pass: the conditions on the caller and the file, and the exception. */
__noinline int ms_rule_facts_match(const struct ms_rule *rule, const struct ms_facts *f)
{
	bool excepted;

	if (!rule || !f)
		return 0;
	if (rule->comm && !ms_in(f->comm, rule->comm))
		return 0;
	if (rule->exe && !f->exe_unknown && !ms_in(f->exe, rule->exe))
		return 0;
	if (rule->needs & MS_NEED_FILE) {
		if (!f->has_file)
			return 0;
		if (!f->file.kinds_unknown && (f->file.kinds & rule->file_care) != rule->file_want)
			return 0;
		if (rule->path && !f->file.path_unknown && !ms_in(f->file.classes, rule->path))
			return 0;
		if (rule->not_path && !f->file.path_unknown && ms_in(f->file.classes, rule->not_path))
			return 0;
	}
	if (!rule->except_comm && !rule->except_exe)
		return 1;
	excepted = (!rule->except_comm || ms_in(f->comm, rule->except_comm)) &&
		   (!rule->except_exe || (!f->exe_unknown && ms_in(f->exe, rule->except_exe)));
	return !excepted;
}

/* The path classes of `task`'s executable under generation `gen`, from its mm->exe_file, into
 * `facts`. */
static __always_inline void ms_compute_exe(struct task_struct *task, __u32 gen,
					   struct ms_task_facts *facts)
{
	struct ms_file_facts file_facts = {};
	struct file *file = BPF_CORE_READ(task, mm, exe_file);

	if (!file) {
		facts->exe = 0;
		facts->exe_unknown = 1;
	} else {
		ms_file_facts((__u64)file, gen & 1, MS_NEED_PATH, &file_facts);
		facts->exe = file_facts.classes;
		facts->exe_unknown = file_facts.path_unknown;
	}
	facts->exe_generation = gen;
}

/* The first zero byte of little-endian `w` as a bit (1 << (8 * index)), 0 when it has none:
 * the lowest byte flagged by the zero-byte test is always a real zero (a false flag needs a
 * borrow from a zero below it). */
static __always_inline __u64 ms_first_zero_byte(__u64 w)
{
	__u64 flagged = (w - 0x0101010101010101ULL) & ~w & 0x8080808080808080ULL;

	return (flagged & -flagged) >> 7;
}

/* Zero every byte of a 16-byte task name after its first NUL. Kernels before 5.17 copy a new
 * name (prctl PR_SET_NAME, exec) without clearing the old one's tail, so the raw array can hold
 * bytes past the NUL that bpf_get_current_comm would not give. */
static __always_inline void ms_nul_pad(__u64 name[2])
{
	__u64 zero = ms_first_zero_byte(name[0]);

	if (zero) {
		name[0] &= zero - 1;
		name[1] = 0;
	} else {
		zero = ms_first_zero_byte(name[1]);
		if (zero)
			name[1] &= zero - 1;
	}
}

/* The caller's comm (with MS_NEED_COMM in `needs`) and executable (MS_NEED_EXE) classes under
 * generation `gen`, from the thread's cache (see maps.h), looked up or computed when it has none
 * for `gen`. Without a cache entry (no memory), the same, uncached. */
static __always_inline void ms_caller_facts(struct ms_facts *f, __u8 needs, __u32 gen)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct ms_task_facts scratch = {};
	struct ms_task_facts *cache;
	struct ms_comm_classes *found;
	__u64 name[2];

	cache = bpf_task_storage_get(&task_facts, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!cache)
		cache = &scratch;
	if (needs & MS_NEED_COMM) {
		/* The task's name, NUL-padded as bpf_get_current_comm gives it, from two loads
		 * instead of the helper call. */
		name[0] = *(__u64 *)&task->comm[0];
		name[1] = *(__u64 *)&task->comm[8];
		ms_nul_pad(name);
		if (cache->comm_generation != gen || cache->comm_name[0] != name[0] ||
		    cache->comm_name[1] != name[1]) {
			found = bpf_map_lookup_elem(&comm_classes, name);
			cache->comm = found ? found->classes[gen & 1] : 0;
			cache->comm_name[0] = name[0];
			cache->comm_name[1] = name[1];
			cache->comm_generation = gen;
		}
		f->comm = cache->comm;
	}
	if (needs & MS_NEED_EXE) {
		if (cache->exe_generation != gen)
			ms_compute_exe(task, gen, cache);
		f->exe = cache->exe;
		f->exe_unknown = cache->exe_unknown;
	}
}

/* The file of the call: the descriptor's for mmap, the mapping's for mprotect; 0 when none. */
static __always_inline __u64 ms_call_file(const struct ms_pending *p)
{
	struct task_struct *task;
	struct fdtable *fdt;
	struct file **fds;
	struct file *file = NULL;
	__s32 fd = (__s32)p->args[4];

	if (p->syscall == MS_SYSCALL_MPROTECT)
		return p->vma_file;
	if (!ms_may_have_file(p))
		return 0;
	task = (struct task_struct *)bpf_get_current_task();
	fdt = BPF_CORE_READ(task, files, fdt);
	if ((__u32)fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	return (__u64)file;
}

/* The first matching rule of `key`'s set, applied to `p`; 1 when one matched. A global
 * function too: entry programs call it for the caller's cgroup and for key 0. */
__noinline int ms_enforce_set(__u64 key, struct ms_pending *p)
{
	struct ms_rule_set *set;
	struct ms_call call = {};
	struct ms_facts facts = {};
	__u32 candidates = 0, count, generation;
	__u8 needs = 0;
	int i;

	if (!p)
		return 0;
	set = bpf_map_lookup_elem(&enforce, &key);
	if (!set)
		return 0;
	call.prot = ms_judged_prot(p);
	call.flags = p->args[3];
	call.length = p->args[1];
	call.syscall = p->syscall;
	call.anonymous = ms_is_anonymous(p);
	call.may_have_file = ms_may_have_file(p);
	count = set->count;
	for (i = 0; i < MS_RULES_PER_SET; i++) {
		const struct ms_rule *rule = &set->rules[i];
		__u32 matched;

		if (i >= count)
			break;
		/* Most rules fail on the protection: tell that without the call. */
		if ((call.prot & rule->prot_all) != rule->prot_all)
			continue;
		matched = ms_rule_call_matches(rule, &call) & 1;
		candidates |= matched << i;
		needs |= rule->needs & (__u8)-matched;
	}
	if (!candidates)
		return 0;
	generation = set->generation;
	if (needs & (MS_NEED_COMM | MS_NEED_EXE))
		ms_caller_facts(&facts, needs, generation);
	if (needs & MS_NEED_FILE) {
		__u64 file = ms_call_file(p);

		facts.has_file = file != 0;
		if (file && (needs & (MS_NEED_KINDS | MS_NEED_PATH)))
			ms_file_facts(file, generation & 1, needs, &facts.file);
	}
	for (i = 0; i < MS_RULES_PER_SET; i++) {
		const struct ms_rule *rule = &set->rules[i];

		if (!((candidates >> i) & 1))
			continue;
		/* Most rules that reach here fail on their comm or executable class: tell that
		 * without the call. */
		if ((rule->comm && !ms_in(facts.comm, rule->comm)) ||
		    (rule->exe && !facts.exe_unknown && !ms_in(facts.exe, rule->exe)))
			continue;
		if (!ms_rule_facts_match(rule, &facts))
			continue;
		p->action = set->rules[i].action;
		p->rule_id = set->rules[i].rule_id;
		if (p->action == MS_ACTION_KILL)
			bpf_send_signal(MS_SIGKILL);
		return 1;
	}
	return 0;
}

/* Apply the caller's cgroup rules, then the rules for every process. */
static __always_inline bool ms_enforce(struct ms_pending *p)
{
	return ms_enforce_set(p->cgroup_id, p) || ms_enforce_set(0, p);
}

/* Whether any enforcement rules are loaded (see `enforce_state`). */
static __always_inline bool ms_enforcing(void)
{
	__u32 key = 0;
	struct ms_enforce_state *state = bpf_map_lookup_elem(&enforce_state, &key);

	return state && state->sets;
}

/* sched_process_exec: the thread now runs another executable. Recompute its classes (under the
 * newest tables) where some rule reads executables, else forget the old ones. */
static __always_inline int ms_on_exec(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct ms_enforce_state *state;
	struct ms_task_facts *facts;
	__u32 key = 0;

	state = bpf_map_lookup_elem(&enforce_state, &key);
	if (!state || !(state->flags & MS_STATE_EXE)) {
		facts = bpf_task_storage_get(&task_facts, task, 0, 0);
		if (facts)
			facts->exe_generation = 0;
		return 0;
	}
	facts = bpf_task_storage_get(&task_facts, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (facts)
		ms_compute_exe(task, state->generation, facts);
	return 0;
}

/* sched_process_fork: a new thread or process runs the same executable as its parent. */
static __always_inline int ms_on_fork(struct task_struct *parent, struct task_struct *child)
{
	struct ms_task_facts *from, *to;

	from = bpf_task_storage_get(&task_facts, parent, 0, 0);
	if (!from || !from->exe_generation)
		return 0;
	to = bpf_task_storage_get(&task_facts, child, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (to)
		*to = *from;
	return 0;
}

/* LSM hooks: refuse the call in progress on this thread if its entry decided Deny. */
static __always_inline int ms_lsm_verdict(int ret)
{
	struct ms_pending *p;

	if (ret)
		return ret; /* an earlier LSM refused already */
	p = bpf_task_storage_get(&pending, bpf_get_current_task_btf(), 0, 0);
	if (p && p->syscall && p->action == MS_ACTION_DENY)
		return -1; /* -EPERM */
	return 0;
}

#endif /* MAPSENTRY_ENFORCE_H */
