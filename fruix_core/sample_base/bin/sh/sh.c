/*
 * sh: the command interpreter of the sample base.
 *
 * Deliberately small: simple commands separated by ';' or newlines; words
 * split on blanks, with '...' and "..." quoting and backslash escapes; '#'
 * comments; the word $? for the status of the last command; the builtins
 * cd, echo, exit, true, false and ':'.  Anything else is run through PATH.
 *
 *	sh -c string
 *	sh [file]
 */
#include <sys/types.h>
#include <sys/wait.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sample.h"

#define	MAXWORDS	128

static int last_status;
static char status_word[16] = "0";

static void
syntax_error(const char *what)
{
	fprintf(stderr, "sh: syntax error: %s\n", what);
	exit(2);
}

/*
 * Split the command that starts at *pos into words, in place.  *pos is left
 * after the command's terminator, or NULL at the end of the input.
 */
static int
parse_command(char **pos, char **words)
{
	char *r = *pos, *w, c;
	int n = 0;

	for (;;) {
		while (*r == ' ' || *r == '\t')
			r++;
		if (*r == '#')
			while (*r != '\0' && *r != '\n')
				r++;
		if (*r == '\0') {
			*pos = NULL;
			return (n);
		}
		if (*r == ';' || *r == '\n') {
			*pos = r + 1;
			return (n);
		}
		if (n == MAXWORDS - 1)
			syntax_error("too many words");
		words[n++] = w = r;
		while ((c = *r) != '\0' && c != ' ' && c != '\t' && c != ';' &&
		    c != '\n') {
			if (c == '\'') {
				for (r++; *r != '\''; )
					if (*r == '\0')
						syntax_error("unterminated '");
					else
						*w++ = *r++;
				r++;
			} else if (c == '"') {
				for (r++; *r != '"'; ) {
					if (*r == '\0')
						syntax_error("unterminated \"");
					if (*r == '\\' && (r[1] == '"' ||
					    r[1] == '\\' || r[1] == '$'))
						r++;
					*w++ = *r++;
				}
				r++;
			} else if (c == '\\' && r[1] != '\0') {
				r++;
				*w++ = *r++;
			} else
				*w++ = *r++;
		}
		/* The terminator is saved in c; w never runs ahead of r. */
		*w = '\0';
		if (strcmp(words[n - 1], "$?") == 0)
			words[n - 1] = status_word;
		if (c == '\0') {
			*pos = NULL;
			return (n);
		}
		r++;
		if (c == ';' || c == '\n') {
			*pos = r;
			return (n);
		}
	}
}

static int
builtin_echo(int argc, char **argv)
{
	int i = 1, newline = 1;

	if (argc > 1 && strcmp(argv[1], "-n") == 0) {
		newline = 0;
		i++;
	}
	for (; i < argc; i++)
		printf("%s%s", argv[i], i + 1 < argc ? " " : "");
	if (newline)
		putchar('\n');
	return (fflush(stdout) == 0 ? 0 : 1);
}

static int
run_program(char **argv)
{
	pid_t pid;
	int status, saved;

	fflush(stdout);
	if ((pid = fork()) < 0) {
		fprintf(stderr, "sh: fork: %s\n", strerror(errno));
		return (2);
	}
	if (pid == 0) {
		execvp(argv[0], argv);
		saved = errno;
		fprintf(stderr, "sh: %s: %s\n", argv[0],
		    saved == ENOENT ? "not found" : strerror(saved));
		_exit(saved == ENOENT ? 127 : 126);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return (2);
	if (WIFEXITED(status))
		return (WEXITSTATUS(status));
	return (128 + WTERMSIG(status));
}

static int
run_command(int argc, char **argv)
{
	const char *dir;

	if (strcmp(argv[0], "exit") == 0) {
		fflush(stdout);
		exit(argc > 1 ? atoi(argv[1]) & 0xff : last_status);
	}
	if (strcmp(argv[0], "echo") == 0)
		return (builtin_echo(argc, argv));
	if (strcmp(argv[0], "true") == 0 || strcmp(argv[0], ":") == 0)
		return (0);
	if (strcmp(argv[0], "false") == 0)
		return (1);
	if (strcmp(argv[0], "cd") == 0) {
		dir = argc > 1 ? argv[1] : getenv("HOME");
		if (dir == NULL || chdir(dir) != 0) {
			fprintf(stderr, "sh: cd: %s: %s\n", dir ? dir : "(no HOME)",
			    dir ? strerror(errno) : "not set");
			return (1);
		}
		return (0);
	}
	return (run_program(argv));
}

static char *
read_all(FILE *fp, const char *name)
{
	char *buf = NULL, *bigger;
	size_t len = 0, size = 0, got;

	do {
		if (size - len < 4096) {
			size = size * 2 + 4096;
			if ((bigger = realloc(buf, size)) == NULL) {
				fprintf(stderr, "sh: out of memory\n");
				exit(2);
			}
			buf = bigger;
		}
		got = fread(buf + len, 1, size - len - 1, fp);
		len += got;
	} while (got > 0);
	if (ferror(fp)) {
		fprintf(stderr, "sh: %s: read error\n", name);
		exit(2);
	}
	buf[len] = '\0';
	return (buf);
}

int
main(int argc, char **argv)
{
	char *script, *pos, *words[MAXWORDS];
	FILE *fp;
	int n;

	if (argc >= 3 && strcmp(argv[1], "-c") == 0) {
		script = argv[2];
	} else if (argc == 2 && argv[1][0] != '-') {
		if ((fp = fopen(argv[1], "r")) == NULL) {
			fprintf(stderr, "sh: %s: %s\n", argv[1], strerror(errno));
			return (127);
		}
		script = read_all(fp, argv[1]);
		fclose(fp);
	} else if (argc == 1) {
		script = read_all(stdin, "standard input");
	} else {
		fprintf(stderr, "usage: sh [-c string] [file]\n");
		return (2);
	}

	for (pos = script; pos != NULL; ) {
		n = parse_command(&pos, words);
		if (n == 0)
			continue;
		words[n] = NULL;
		last_status = run_command(n, words);
		snprintf(status_word, sizeof(status_word), "%d", last_status);
	}
	fflush(stdout);
	return (last_status);
}
