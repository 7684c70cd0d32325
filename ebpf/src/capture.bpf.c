// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Capture of mmap (x86_64) and mmap2 / old_mmap (ia32 compat) calls: one record per call.
 * Thin entry points, one pair per attach mode; the logic is in include/capture.h. The agent
 * loads and attaches only the pair of the mode it chose.
 */
#include "capture.h"

char LICENSE[] SEC("license") = "GPL";

/*
 * Mode `tracepoint`: the sys_enter/sys_exit tracepoints, which see native and ia32 calls alike
 * (the per-syscall tracepoints skip ia32 calls). They run on every system call, so the first
 * test is the call number. BTF-typed (tp_btf) where the kernel allows it: it reads the
 * registers directly; raw_tp, the fallback, through bpf_probe_read_kernel.
 *   entry_SYSCALL_64 / do_int80_syscall_32 -> syscall_enter_from_user_mode -> trace_sys_enter
 *   syscall_exit_to_user_mode -> trace_sys_exit
 */
SEC("tp_btf/sys_enter")
int BPF_PROG(ms_btf_enter, struct pt_regs *regs, long nr)
{
	return ms_on_enter(regs, nr, true, true);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(ms_btf_exit, struct pt_regs *regs, long ret)
{
	long nr = regs->orig_ax;

	if (!ms_is_mmap_nr(nr))
		return 0;
	return ms_on_exit(regs, nr, ret, true);
}

SEC("raw_tp/sys_enter")
int BPF_PROG(ms_tp_enter, struct pt_regs *regs, long nr)
{
	return ms_on_enter(regs, nr, false, true);
}

SEC("raw_tp/sys_exit")
int BPF_PROG(ms_tp_exit, struct pt_regs *regs, long ret)
{
	long nr = BPF_CORE_READ(regs, orig_ax);

	if (!ms_is_mmap_nr(nr))
		return 0;
	return ms_on_exit(regs, nr, ret, false);
}

/*
 * Mode `tracepoint` on a kernel that runs no ia32 calls (built without IA32_EMULATION, or booted
 * with ia32_emulation=false): the per-syscall tracepoints of mmap, mprotect and pkey_mprotect,
 * one program each way attached to the three. An unrelated call then pays only the kernel's
 * syscall-tracing test, not a BPF program (BENCHMARKS.md, "The tracepoint tax ... hook by
 * hook"); these events skip ia32 calls, which is why they serve only where none can be made.
 * The caller's user registers come from its task, as in the kprobe and fentry modes.
 *   syscall_trace_enter -> trace_sys_enter -> perf_syscall_enter (per-syscall bitmap test)
 */
struct ms_syscall_enter_args {
	__u64 common; /* type, flags, preempt_count, pid */
	__s32 nr;
	__u32 pad;
	__u64 args[6];
};

struct ms_syscall_exit_args {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__s64 ret;
};

SEC("tracepoint/syscalls/sys_enter_mmap")
int ms_sc_enter(struct ms_syscall_enter_args *ctx)
{
	return ms_on_enter(ms_user_regs(), ctx->nr, true, true);
}

SEC("tracepoint/syscalls/sys_exit_mmap")
int ms_sc_exit(struct ms_syscall_exit_args *ctx)
{
	return ms_on_exit(ms_user_regs(), ctx->nr, ctx->ret, true);
}

/*
 * Mode `kprobe`: the kernel function every mapping call goes through; the agent attaches to
 * do_mmap2 where the kernel has it, else ksys_mmap_pgoff:
 *   __x64_sys_mmap / __ia32_sys_mmap2 / __ia32_compat_sys_ia32_mmap -> ksys_mmap_pgoff
 */
SEC("kprobe/ksys_mmap_pgoff")
int BPF_KPROBE(ms_kprobe_enter)
{
	struct pt_regs *regs = ms_user_regs();

	return ms_on_enter(regs, BPF_CORE_READ(regs, orig_ax), false, false);
}

SEC("kretprobe/ksys_mmap_pgoff")
int BPF_KRETPROBE(ms_kprobe_exit, long ret)
{
	return ms_on_exit(NULL, 0, ret, false);
}

/* Mode `fentry`: the same function through BPF trampolines (no kprobe breakpoint). */
SEC("fentry/ksys_mmap_pgoff")
int BPF_PROG(ms_fentry_enter)
{
	struct pt_regs *regs = ms_user_regs();

	return ms_on_enter(regs, regs->orig_ax, true, false);
}

SEC("fexit/ksys_mmap_pgoff")
int BPF_PROG(ms_fexit_exit)
{
	__u64 ret = 0;

	bpf_get_func_ret(ctx, &ret);
	return ms_on_exit(NULL, 0, (long)ret, true);
}

/*
 * mprotect in the kprobe and fentry modes: the function every mprotect-family call passes
 * through, hooked beside the mmap function (the tracepoint mode sees these calls at sys_enter).
 *   __x64_sys_mprotect / __x64_sys_pkey_mprotect / __ia32_sys_... -> do_mprotect_pkey
 * The same entry logic reads the call from the saved user registers, judges it against the
 * mapping it changes (enforcement included) and the exit emits the record.
 */
SEC("kprobe/do_mprotect_pkey")
int BPF_KPROBE(ms_kprobe_mprotect_enter)
{
	struct pt_regs *regs = ms_user_regs();

	return ms_on_enter(regs, BPF_CORE_READ(regs, orig_ax), false, false);
}

/* do_mprotect_pkey returns int: the upper half of the return register is not part of it. */
SEC("kretprobe/do_mprotect_pkey")
int BPF_KRETPROBE(ms_kprobe_mprotect_exit, long ret)
{
	return ms_on_exit(NULL, 0, (long)(int)ret, false);
}

SEC("fentry/do_mprotect_pkey")
int BPF_PROG(ms_fentry_mprotect_enter)
{
	struct pt_regs *regs = ms_user_regs();

	return ms_on_enter(regs, regs->orig_ax, true, false);
}

SEC("fexit/do_mprotect_pkey")
int BPF_PROG(ms_fexit_mprotect_exit)
{
	__u64 ret = 0;

	bpf_get_func_ret(ctx, &ret);
	return ms_on_exit(NULL, 0, (long)(int)ret, true);
}

/*
 * Exec tracking (enforcement: rules on the executable). The thread that execs recomputes the
 * path classes of its new executable; a new thread or process starts with its parent's. Threads
 * that predate the agent compute theirs at their first judged call (include/enforce.h).
 *   begin_new_exec ... exec_binprm -> trace_sched_process_exec
 *   kernel_clone -> trace_sched_process_fork(current, p)
 * BTF-typed where the kernel allows it; the raw flavour (kernels whose BTF comes from --btf)
 * has no fork hook: its children compute their classes at their first judged call.
 */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(ms_btf_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return ms_on_exec();
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(ms_tp_exec)
{
	return ms_on_exec();
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(ms_btf_fork, struct task_struct *parent, struct task_struct *child)
{
	return ms_on_fork(parent, child);
}

/*
 * Deny (enforcement): BPF LSM hooks inside the mapping calls, where BPF LSM is active. They
 * refuse the call whose entry program decided Deny for it (see include/enforce.h).
 *   do_mmap_pgoff / vm_mmap_pgoff -> security_mmap_file -> bpf_lsm_mmap_file
 *   do_mprotect_pkey -> security_file_mprotect -> bpf_lsm_file_mprotect
 */
SEC("lsm/mmap_file")
int BPF_PROG(ms_lsm_mmap_file, struct file *file, unsigned long reqprot, unsigned long prot,
	     unsigned long flags, int ret)
{
	return ms_lsm_verdict(ret);
}

SEC("lsm/file_mprotect")
int BPF_PROG(ms_lsm_file_mprotect, struct vm_area_struct *vma, unsigned long reqprot,
	     unsigned long prot, int ret)
{
	return ms_lsm_verdict(ret);
}
