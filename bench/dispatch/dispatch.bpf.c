// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * What tracepoint mode's hooks cost an unrelated system call, hook by hook (bench/dispatch/run.sh).
 * Each program does only the first test mapsentry's programs do on a non-mapping call; which of
 * them are attached is the variant.
 */
#include "vmlinux_subset.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

__u64 hits;

/* The generic hooks mapsentry's tracepoint mode uses (ebpf/src/capture.bpf.c). */
SEC("tp_btf/sys_enter")
int BPF_PROG(generic_enter, struct pt_regs *regs, long nr)
{
	if (nr == 9)
		__sync_fetch_and_add(&hits, 1);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(generic_exit, struct pt_regs *regs, long ret)
{
	if (regs->orig_ax == 9)
		__sync_fetch_and_add(&hits, 1);
	return 0;
}

/* The per-syscall tracepoints (bpftrace's floor): they run for their own call only, and never
 * for an ia32 call. */
SEC("tracepoint/syscalls/sys_enter_mmap")
int per_call_enter(void *ctx)
{
	__sync_fetch_and_add(&hits, 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_mmap")
int per_call_exit(void *ctx)
{
	__sync_fetch_and_add(&hits, 1);
	return 0;
}
