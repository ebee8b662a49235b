/*
 * test, [: evaluate a condition.
 *
 * Installed twice, as /bin/test and as /bin/[ (one file, two names); called
 * as '[' it wants a closing ']'.  Supports '!', the string tests -n and -z,
 * the file tests -e -f -d -h -L -r -s -w -x, and the binary operators = !=
 * -eq -ne -lt -le -gt -ge.  Exit status: 0 true, 1 false, 2 error.
 */
#include <sys/stat.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sample.h"

static const char *progname = "test";

static void
fail(const char *msg, const char *arg)
{
	fprintf(stderr, "%s: %s%s%s\n", progname, arg ? arg : "",
	    arg ? ": " : "", msg);
	exit(2);
}

static long
number(const char *s)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || errno == ERANGE)
		fail("integer expression expected", s);
	return (v);
}

static int
unary(const char *op, const char *arg)
{
	struct stat sb;

	if (strcmp(op, "-n") == 0)
		return (arg[0] != '\0');
	if (strcmp(op, "-z") == 0)
		return (arg[0] == '\0');
	if (strcmp(op, "-h") == 0 || strcmp(op, "-L") == 0)
		return (lstat(arg, &sb) == 0 && S_ISLNK(sb.st_mode));
	if (strcmp(op, "-r") == 0)
		return (access(arg, R_OK) == 0);
	if (strcmp(op, "-w") == 0)
		return (access(arg, W_OK) == 0);
	if (strcmp(op, "-x") == 0)
		return (access(arg, X_OK) == 0);
	if (strcmp(op, "-e") == 0)
		return (stat(arg, &sb) == 0);
	if (strcmp(op, "-f") == 0)
		return (stat(arg, &sb) == 0 && S_ISREG(sb.st_mode));
	if (strcmp(op, "-d") == 0)
		return (stat(arg, &sb) == 0 && S_ISDIR(sb.st_mode));
	if (strcmp(op, "-s") == 0)
		return (stat(arg, &sb) == 0 && sb.st_size > 0);
	fail("unknown unary operator", op);
	return (0);
}

static int
binary(const char *a, const char *op, const char *b)
{
	if (strcmp(op, "=") == 0)
		return (strcmp(a, b) == 0);
	if (strcmp(op, "!=") == 0)
		return (strcmp(a, b) != 0);
	if (strcmp(op, "-eq") == 0)
		return (number(a) == number(b));
	if (strcmp(op, "-ne") == 0)
		return (number(a) != number(b));
	if (strcmp(op, "-lt") == 0)
		return (number(a) < number(b));
	if (strcmp(op, "-le") == 0)
		return (number(a) <= number(b));
	if (strcmp(op, "-gt") == 0)
		return (number(a) > number(b));
	if (strcmp(op, "-ge") == 0)
		return (number(a) >= number(b));
	fail("unknown binary operator", op);
	return (0);
}

static int
evaluate(int argc, char **argv)
{
	switch (argc) {
	case 0:
		return (0);
	case 1:
		return (argv[0][0] != '\0');
	case 2:
		if (strcmp(argv[0], "!") == 0)
			return (!evaluate(1, argv + 1));
		return (unary(argv[0], argv[1]));
	case 3:
		if (strcmp(argv[0], "!") == 0 && strcmp(argv[1], "=") != 0 &&
		    strcmp(argv[1], "!=") != 0)
			return (!evaluate(2, argv + 1));
		return (binary(argv[0], argv[1], argv[2]));
	default:
		if (strcmp(argv[0], "!") == 0)
			return (!evaluate(argc - 1, argv + 1));
		fail("too many arguments", NULL);
		return (0);
	}
}

int
main(int argc, char **argv)
{
	progname = sample_basename(argv[0]);
	if (strcmp(progname, "[") == 0) {
		if (argc < 2 || strcmp(argv[argc - 1], "]") != 0)
			fail("missing ]", NULL);
		argc--;
	}
	return (evaluate(argc - 1, argv + 1) ? 0 : 1);
}
