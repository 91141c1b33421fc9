/*
 * Tiny long-running demo service for the fastswitch test VM.
 *
 * Build-time macros: NAME (e.g. "hello"), VERSION (e.g. "v1"); with WITH_LIBDEMO
 * the reported version comes from libdemo.so instead (demo-lib).
 *
 * Usage: demo-NAME [OUTDIR [DATAFILE]]      (OUTDIR defaults to /run/demo)
 * At start it writes, each as one line:
 *   OUTDIR/NAME.version  compiled-in version (or libdemo's version)
 *   OUTDIR/NAME.pid      its pid
 *   OUTDIR/NAME.data     first line of DATAFILE (only if DATAFILE is given; a
 *                        missing DATAFILE is a start failure)
 * On every SIGHUP it rewrites OUTDIR/NAME.reloads with the number of SIGHUPs
 * received so far. It then sleeps until killed, so /proc/PID/exe is this ELF.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(NAME) || !defined(VERSION)
#error "compile with -DNAME=\"...\" -DVERSION=\"...\""
#endif

#ifdef WITH_LIBDEMO
#include "libdemo.h"
#define REPORTED_VERSION demo_lib_version()
#else
#define REPORTED_VERSION VERSION
#endif

static volatile sig_atomic_t hups;

static void on_hup(int sig)
{
	(void)sig;
	hups++;
}

static void put(const char *dir, const char *key, const char *value)
{
	char path[4096], tmp[4200];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s.%s", dir, NAME, key);
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	f = fopen(tmp, "w");
	if (!f || fprintf(f, "%s\n", value) < 0 || fclose(f) != 0 || rename(tmp, path) != 0) {
		fprintf(stderr, "demo-%s: writing %s: %s\n", NAME, path, strerror(errno));
		exit(1);
	}
}

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : "/run/demo";
	const char *datafile = argc > 2 ? argv[2] : NULL;
	char buf[4096];
	unsigned seen = 0;
	sigset_t block, old;
	struct sigaction sa;

	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_hup;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGHUP, &sa, NULL);
	sigemptyset(&block);
	sigaddset(&block, SIGHUP);
	sigprocmask(SIG_BLOCK, &block, &old);

	if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
		fprintf(stderr, "demo-%s: mkdir %s: %s\n", NAME, dir, strerror(errno));
		return 1;
	}
	if (datafile) {
		FILE *f = fopen(datafile, "r");
		if (!f || !fgets(buf, sizeof buf, f)) {
			fprintf(stderr, "demo-%s: reading %s: %s\n", NAME, datafile, strerror(errno));
			return 1;
		}
		fclose(f);
		buf[strcspn(buf, "\n")] = '\0';
		put(dir, "data", buf);
	}
	put(dir, "version", REPORTED_VERSION);
	snprintf(buf, sizeof buf, "%ld", (long)getpid());
	put(dir, "pid", buf);
	printf("demo-%s %s started, pid %ld\n", NAME, REPORTED_VERSION, (long)getpid());
	fflush(stdout);

	for (;;) {
		while (seen != (unsigned)hups) {
			seen++;
			snprintf(buf, sizeof buf, "%u", seen);
			put(dir, "reloads", buf);
			printf("demo-%s: reload #%u\n", NAME, seen);
			fflush(stdout);
		}
		sigsuspend(&old);
	}
}
