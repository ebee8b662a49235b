/*
 * wc: count lines, words and bytes (-l, -w, -c select; all three by
 * default), with a total line for several files.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

struct counts {
	uintmax_t	lines, words, bytes;
};

static int show_lines, show_words, show_bytes;

static void
report(const struct counts *c, const char *name)
{
	if (show_lines)
		printf(" %7ju", c->lines);
	if (show_words)
		printf(" %7ju", c->words);
	if (show_bytes)
		printf(" %7ju", c->bytes);
	if (name != NULL)
		printf(" %s", name);
	putchar('\n');
}

static int
count(FILE *fp, struct counts *c)
{
	int ch, in_word = 0;

	while ((ch = getc(fp)) != EOF) {
		c->bytes++;
		if (ch == '\n')
			c->lines++;
		if (isspace(ch))
			in_word = 0;
		else if (!in_word) {
			in_word = 1;
			c->words++;
		}
	}
	return (ferror(fp) ? -1 : 0);
}

int
main(int argc, char **argv)
{
	struct counts total = { 0, 0, 0 }, one;
	FILE *fp;
	int ch, i, files = 0, rval = 0;

	while ((ch = getopt(argc, argv, "clw")) != -1) {
		switch (ch) {
		case 'c':
			show_bytes = 1;
			break;
		case 'l':
			show_lines = 1;
			break;
		case 'w':
			show_words = 1;
			break;
		default:
			fprintf(stderr, "usage: wc [-clw] [file ...]\n");
			return (2);
		}
	}
	if (!show_lines && !show_words && !show_bytes)
		show_lines = show_words = show_bytes = 1;

	if (optind == argc) {
		one = total;
		if (count(stdin, &one) != 0) {
			fprintf(stderr, "wc: stdin: read error\n");
			return (1);
		}
		report(&one, NULL);
		return (0);
	}
	for (i = optind; i < argc; i++) {
		if ((fp = fopen(argv[i], "rb")) == NULL) {
			fprintf(stderr, "wc: %s: %s\n", argv[i], strerror(errno));
			rval = 1;
			continue;
		}
		memset(&one, 0, sizeof(one));
		if (count(fp, &one) != 0) {
			fprintf(stderr, "wc: %s: read error\n", argv[i]);
			rval = 1;
		}
		fclose(fp);
		report(&one, argv[i]);
		total.lines += one.lines;
		total.words += one.words;
		total.bytes += one.bytes;
		files++;
	}
	if (files > 1)
		report(&total, "total");
	return (rval);
}
