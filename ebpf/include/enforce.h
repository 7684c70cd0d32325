/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Enforcement at syscall entry, before the kernel maps anything: the caller's cgroup rules
 * (and the rules for every process, key 0) are matched against the arguments; a Kill rule
 * sends SIGKILL, which the caller receives before it returns to user space with the mapping; a
 * Deny decision is parked with the call and returned as -EPERM by the BPF LSM hooks the kernel
 * calls inside it (mmap_file, file_mprotect), where BPF LSM is active.
 * The decision never depends on the ring buffer or on the report filters.
 */
#ifndef MAPSENTRY_ENFORCE_H
#define MAPSENTRY_ENFORCE_H

#include "vmlinux_subset.h"
#include <bpf/bpf_helpers.h>
#include "mapsentry_event.h"
#include "maps.h"

#define MS_SIGKILL 9
#define MS_ENFORCE_MAP_ANONYMOUS 0x20

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

static __always_inline bool ms_rule_matches(const struct ms_rule *rule, const struct ms_pending *p)
{
	__u64 prot = ms_judged_prot(p), flags = p->args[3];
	bool anonymous = ms_is_anonymous(p);

	if ((prot & rule->prot_all) != rule->prot_all || (rule->prot_any && !(prot & rule->prot_any)))
		return false;
	if ((flags & rule->flags_all) != rule->flags_all || (rule->flags_any && !(flags & rule->flags_any)))
		return false;
	if (p->args[1] < rule->min_length)
		return false;
	if (rule->syscalls && !(rule->syscalls & (1 << p->syscall)))
		return false;
	if ((rule->mapping == MS_MAPPING_ANONYMOUS && !anonymous) || (rule->mapping == MS_MAPPING_FILE && anonymous))
		return false;
	return rule->action != MS_ACTION_NONE;
}

/* The first matching rule of `key`'s set, applied to `p`; true when one matched. */
static __always_inline bool ms_enforce_set(__u64 key, struct ms_pending *p)
{
	struct ms_rule_set *set = bpf_map_lookup_elem(&enforce, &key);
	int i;

	if (!set)
		return false;
	for (i = 0; i < MS_RULES_PER_SET; i++) {
		if (i >= set->count)
			break;
		if (!ms_rule_matches(&set->rules[i], p))
			continue;
		p->action = set->rules[i].action;
		p->rule_id = set->rules[i].rule_id;
		if (p->action == MS_ACTION_KILL)
			bpf_send_signal(MS_SIGKILL);
		return true;
	}
	return false;
}

/* Apply the caller's cgroup rules, then the rules for every process. */
static __always_inline bool ms_enforce(struct ms_pending *p)
{
	return ms_enforce_set(p->cgroup_id, p) || ms_enforce_set(0, p);
}

/* Whether any enforcement rules are loaded (see `enforce_sets`). */
static __always_inline bool ms_enforcing(void)
{
	__u32 key = 0;
	__u32 *sets = bpf_map_lookup_elem(&enforce_sets, &key);

	return sets && *sets;
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
