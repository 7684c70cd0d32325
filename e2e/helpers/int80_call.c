// SPDX-License-Identifier: Apache-2.0
/*
 * Test helper, built with `gcc -static` as a 64-bit program: makes ia32 system calls through
 * `int $0x80` (mmap2, old_mmap, mprotect), which any 64-bit process may do on a kernel that runs
 * ia32 calls, and reports what it passed and got, as JSON. On a kernel that runs none the first
 * `int $0x80` is a general-protection fault: the helper dies of SIGSEGV before its report.
 * Protocol as mmap_call.rs: print {"pid":N}, wait for a line on stdin, call, print the report.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGE 4096UL
#define IA32_OLD_MMAP 90
#define IA32_MPROTECT 125
#define IA32_MMAP2 192

/* old_mmap's argument block, as an ia32 caller lays it out. */
struct mmap_arg_struct32 {
	unsigned int addr, len, prot, flags, fd, offset;
};

/*
 * An ia32 system call: number in eax, arguments in ebx, ecx, edx, esi, edi, ebp. rbp is saved
 * by hand (the compiler may not be told it is clobbered); built with -mno-red-zone, so the push
 * cannot overwrite the caller's locals.
 */
static long int80(long nr, long a, long b, long c, long d, long e, long f)
{
	register long r12 __asm__("r12") = f;
	long ret;

	__asm__ volatile("push %%rbp\n\t"
			 "mov %%r12, %%rbp\n\t"
			 "int $0x80\n\t"
			 "pop %%rbp"
			 : "=a"(ret)
			 : "a"(nr), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e), "r"(r12)
			 : "memory", "r8", "r9", "r10", "r11");
	return ret;
}

/* An ia32 return value as the kernel gives it: a 32-bit address, or -errno. */
static long long ret32(long r)
{
	int as_int = (int)r;

	return as_int < 0 && as_int > -4096 ? as_int : (long long)(unsigned int)r;
}

static void report(const char *syscall, unsigned long addr, unsigned long len, unsigned long prot,
		   unsigned long flags, long fd, long long ret, int last)
{
	printf("{\"syscall\":\"%s\",\"addr\":%lu,\"length\":%lu,\"prot\":%lu,\"flags\":%lu,\"fd\":%ld,"
	       "\"pgoffset\":0,\"offset\":0,\"ret\":%lld}%s",
	       syscall, addr, len, prot, flags, fd, ret, last ? "" : ",");
}

int main(void)
{
	char line[16];
	unsigned long anon = MAP_PRIVATE | MAP_ANONYMOUS;

	printf("{\"pid\":%d}\n", getpid());
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;

	long long r1 = ret32(int80(IA32_MMAP2, 0, PAGE, PROT_READ | PROT_WRITE, anon, -1, 0));
	if (r1 < 0) {
		fprintf(stderr, "int $0x80 mmap2: %lld\n", r1);
		return 1;
	}
	/* old_mmap reads its arguments from memory an ia32 pointer reaches: the page just mapped. */
	struct mmap_arg_struct32 *old = (struct mmap_arg_struct32 *)(unsigned long)r1;
	*old = (struct mmap_arg_struct32){ 0, 2 * PAGE, PROT_READ, anon, (unsigned int)-1, 0 };
	long long r2 = ret32(int80(IA32_OLD_MMAP, (long)old, 0, 0, 0, 0, 0));
	long long r3 = ret32(int80(IA32_MPROTECT, r1, PAGE, PROT_READ | PROT_EXEC, 0, 0, 0));

	printf("{\"tid\":%ld,\"calls\":[", syscall(SYS_gettid));
	report("mmap2", 0, PAGE, PROT_READ | PROT_WRITE, anon, -1, r1, 0);
	report("old_mmap", 0, 2 * PAGE, PROT_READ, anon, -1, r2, 0);
	report("mprotect", (unsigned long)r1, PAGE, PROT_READ | PROT_EXEC, 0, -1, r3, 1);
	printf("]}\n");
	return 0;
}
