// SPDX-License-Identifier: Apache-2.0
/*
 * Test helper, built with `gcc -m32 -static`: makes ia32 mmap2 (nr 192) and old_mmap (nr 90)
 * calls on a file with page offsets, and reports what it passed and got, as JSON.
 * Protocol as mmap_call.rs: print {"pid":N}, wait for a line on stdin, call, print the report.
 */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGE 4096UL

struct mmap_arg_struct {
	unsigned long addr, len, prot, flags, fd, offset;
};

/* The kernel's return: the address, or -errno. */
static long long ret_of(long r)
{
	return r == -1 ? -(long long)errno : (long long)(unsigned long)r;
}

static void report(const char *syscall, unsigned long addr, unsigned long len, unsigned long prot,
		   unsigned long flags, long fd, unsigned long long pgoffset, unsigned long long offset,
		   long long ret, int last)
{
	printf("{\"syscall\":\"%s\",\"addr\":%lu,\"length\":%lu,\"prot\":%lu,\"flags\":%lu,\"fd\":%ld,"
	       "\"pgoffset\":%llu,\"offset\":%llu,\"ret\":%lld}%s",
	       syscall, addr, len, prot, flags, fd, pgoffset, offset, ret, last ? "" : ",");
}

int main(void)
{
	char path[64], line[16];
	struct stat st;
	int fd;

	printf("{\"pid\":%d}\n", getpid());
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;

	snprintf(path, sizeof(path), "/tmp/mapsentry-m32-%d", getpid());
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || ftruncate(fd, 8 * PAGE) || fstat(fd, &st)) {
		perror(path);
		return 1;
	}

	long r1 = syscall(SYS_mmap2, 0, PAGE, PROT_READ, MAP_SHARED, fd, 2);
	/* A page offset whose byte offset does not fit in 32 bits: only mmap2 can express it. */
	long r2 = syscall(SYS_mmap2, 0, PAGE, PROT_READ, MAP_SHARED, fd, 0x100000);
	long r3 = syscall(SYS_mmap2, 0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct mmap_arg_struct old = { 0, 2 * PAGE, PROT_READ, MAP_PRIVATE, (unsigned long)fd, 3 * PAGE };
	long r4 = syscall(SYS_mmap, &old); /* i386 nr 90: old_mmap */

	printf("{\"tid\":%ld,\"inode\":%llu,\"dev\":%llu,\"calls\":[", syscall(SYS_gettid),
	       (unsigned long long)st.st_ino, (unsigned long long)st.st_dev);
	report("mmap2", 0, PAGE, PROT_READ, MAP_SHARED, fd, 2, 2 * PAGE, ret_of(r1), 0);
	report("mmap2", 0, PAGE, PROT_READ, MAP_SHARED, fd, 0x100000, 0x100000ULL * PAGE, ret_of(r2), 0);
	report("mmap2", 0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0, 0, ret_of(r3), 0);
	report("old_mmap", 0, 2 * PAGE, PROT_READ, MAP_PRIVATE, fd, 3, 3 * PAGE, ret_of(r4), 1);
	printf("]}\n");
	unlink(path);
	return 0;
}
