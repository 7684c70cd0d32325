// SPDX-License-Identifier: Apache-2.0
/* Loads dispatch.bpf.o, attaches the programs named on the command line, prints "attached",
 * and holds them until SIGINT/SIGTERM. */
#include <bpf/libbpf.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv)
{
	struct bpf_object *obj;
	struct bpf_program *prog;

	if (argc < 3) {
		fprintf(stderr, "usage: %s OBJECT PROGRAM...\n", argv[0]);
		return 2;
	}
	obj = bpf_object__open_file(argv[1], NULL);
	if (!obj) {
		fprintf(stderr, "loader: cannot open %s\n", argv[1]);
		return 1;
	}
	bpf_object__for_each_program(prog, obj) {
		bool wanted = false;

		for (int i = 2; i < argc; i++)
			wanted |= !strcmp(argv[i], bpf_program__name(prog));
		bpf_program__set_autoload(prog, wanted);
	}
	if (bpf_object__load(obj)) {
		fprintf(stderr, "loader: loading %s failed\n", argv[1]);
		return 1;
	}
	for (int i = 2; i < argc; i++) {
		prog = bpf_object__find_program_by_name(obj, argv[i]);
		if (!prog || !bpf_program__attach(prog)) {
			fprintf(stderr, "loader: attaching %s failed\n", argv[i]);
			return 1;
		}
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	printf("attached\n");
	fflush(stdout);
	while (!stop)
		pause();
	return 0;
}
