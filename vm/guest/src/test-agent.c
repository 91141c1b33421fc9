/*
 * fastswitch test agent: runs scripts sent by the host harness (tests/vm/)
 * over the virtio-serial port "agent0". One line per message, each way:
 *   guest -> host  "AGENT-READY boot_id=<id> uptime=<seconds>"        once at start
 *   host  -> guest "RUN <nonce> <base64 script>"
 *   guest -> host  "RESULT <nonce> <rc> <base64 stdout> <base64 stderr>"
 * Scripts run one at a time as `bash SCRIPTFILE` (root, cwd /, stdin
 * /dev/null, stdout/stderr to files, so a daemon started by a script cannot
 * hold the command open). rc is the exit status, or 128+signal. A base64
 * field is empty when the stream was empty.
 *
 * C rather than a bash loop: under TCG every fork+exec costs ~0.1-0.5 s, and
 * this way a command costs one (bash) instead of five.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define PORT "/dev/virtio-ports/agent0"
#define WORK "/run/test-agent"

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p) {
		perror("test-agent: realloc");
		exit(1);
	}
	return p;
}

static void write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("test-agent: write to port");
			exit(1); /* systemd restarts us */
		}
		buf += n;
		len -= (size_t)n;
	}
}

/* base64 of data into a new NUL-terminated string */
static char *b64enc(const unsigned char *d, size_t n)
{
	char *out = xrealloc(NULL, (n + 2) / 3 * 4 + 1), *o = out;
	size_t i;
	for (i = 0; i + 2 < n; i += 3) {
		unsigned v = d[i] << 16 | d[i + 1] << 8 | d[i + 2];
		*o++ = b64chars[v >> 18 & 63];
		*o++ = b64chars[v >> 12 & 63];
		*o++ = b64chars[v >> 6 & 63];
		*o++ = b64chars[v & 63];
	}
	if (i < n) {
		unsigned v = d[i] << 16 | (i + 1 < n ? d[i + 1] << 8 : 0);
		*o++ = b64chars[v >> 18 & 63];
		*o++ = b64chars[v >> 12 & 63];
		*o++ = i + 1 < n ? b64chars[v >> 6 & 63] : '=';
		*o++ = '=';
	}
	*o = '\0';
	return out;
}

/* decode base64 in place; returns the decoded length or -1 */
static ssize_t b64dec(char *s)
{
	unsigned acc = 0;
	int bits = 0;
	size_t out = 0;
	for (char *p = s; *p; p++) {
		const char *c;
		if (*p == '=' || *p == '\r' || *p == '\n')
			continue;
		c = strchr(b64chars, *p);
		if (!c)
			return -1;
		acc = acc << 6 | (unsigned)(c - b64chars);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			s[out++] = (char)(acc >> bits & 0xff);
		}
	}
	return (ssize_t)out;
}

static char *read_file(const char *path, size_t *len)
{
	char *buf = NULL;
	size_t cap = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	*len = 0;
	if (fd < 0)
		return xrealloc(NULL, 1);
	for (;;) {
		ssize_t n;
		if (cap - *len < 65536) {
			cap = cap * 2 + 65536;
			buf = xrealloc(buf, cap);
		}
		n = read(fd, buf + *len, cap - *len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		*len += (size_t)n;
	}
	close(fd);
	return buf;
}

static void first_word(const char *path, char *out, size_t size)
{
	size_t len;
	char *s = read_file(path, &len);
	size_t i = 0;
	while (i < len && i + 1 < size && s[i] != ' ' && s[i] != '\n') {
		out[i] = s[i];
		i++;
	}
	out[i] = '\0';
	free(s);
}

static int run_script(const char *script, size_t len)
{
	int fd, status;
	pid_t pid;

	fd = open(WORK "/cmd.sh", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return 125;
	write_all(fd, script, len);
	close(fd);

	pid = fork();
	if (pid < 0)
		return 126;
	if (pid == 0) {
		int in = open("/dev/null", O_RDONLY);
		int out = open(WORK "/out", O_WRONLY | O_CREAT | O_TRUNC, 0600);
		int err = open(WORK "/err", O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (in < 0 || out < 0 || err < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
			_exit(127);
		signal(SIGPIPE, SIG_DFL);
		setsid();
		execl("/bin/bash", "bash", WORK "/cmd.sh", (char *)NULL);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return 126;
	}
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return 128 + WTERMSIG(status);
}

int main(void)
{
	char boot_id[64], uptime[64], *line = NULL;
	size_t cap = 0, len = 0;
	int port = -1;

	const char *path = getenv("TEST_AGENT_PORT") ? getenv("TEST_AGENT_PORT") : PORT; /* for host tests */

	signal(SIGPIPE, SIG_IGN);
	for (int i = 0; i < 600 && port < 0; i++) {
		port = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY);
		if (port < 0)
			usleep(100000);
	}
	if (port < 0) {
		perror(path);
		return 1;
	}
	mkdir(WORK, 0700);
	if (chdir("/") != 0)
		return 1;

	first_word("/proc/sys/kernel/random/boot_id", boot_id, sizeof boot_id);
	first_word("/proc/uptime", uptime, sizeof uptime);
	{
		char hello[200];
		int n = snprintf(hello, sizeof hello, "AGENT-READY boot_id=%s uptime=%s\n", boot_id, uptime);
		write_all(port, hello, (size_t)n);
	}

	for (;;) {
		char *nl;
		ssize_t n;

		while (!(nl = memchr(line, '\n', len))) {
			if (cap - len < 65536) {
				cap = cap * 2 + 65536;
				line = xrealloc(line, cap);
			}
			n = read(port, line + len, cap - len);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				/* host side went away: exit, systemd restarts us */
				return n == 0 ? 0 : 1;
			}
			len += (size_t)n;
		}
		*nl = '\0';
		if (strncmp(line, "RUN ", 4) == 0) {
			char *nonce = line + 4, *payload = strchr(nonce, ' ');
			ssize_t slen = -1;
			if (payload) {
				*payload++ = '\0';
				slen = b64dec(payload);
			}
			if (slen < 0) {
				static const char bad[] = "test-agent: malformed RUN line\n";
				char *eb = b64enc((const unsigned char *)bad, sizeof bad - 1);
				size_t rlen = strlen(nonce) + strlen(eb) + 64;
				char *res = xrealloc(NULL, rlen);
				int m = snprintf(res, rlen, "RESULT %s 125  %s\n", nonce, eb);
				write_all(port, res, (size_t)m);
				free(eb);
				free(res);
			} else {
				{
					size_t olen, elen;
					int rc = run_script(payload, (size_t)slen);
					char *o = read_file(WORK "/out", &olen);
					char *e = read_file(WORK "/err", &elen);
					char *ob = b64enc((unsigned char *)o, olen);
					char *eb = b64enc((unsigned char *)e, elen);
					size_t rlen = strlen(nonce) + strlen(ob) + strlen(eb) + 64;
					char *res = xrealloc(NULL, rlen);
					int m = snprintf(res, rlen, "RESULT %s %d %s %s\n", nonce, rc, ob, eb);
					write_all(port, res, (size_t)m);
					free(o);
					free(e);
					free(ob);
					free(eb);
					free(res);
				}
			}
		}
		len -= (size_t)(nl + 1 - line);
		memmove(line, nl + 1, len);
	}
}
