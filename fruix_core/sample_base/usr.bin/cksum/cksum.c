/*
 * cksum: print the POSIX CRC, the size and the name of each file (standard
 * input when there are none); the CRC itself lives in libsample.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "sample.h"

static int
cksum_file(FILE *fp, const char *name)
{
	unsigned char buf[8192];
	uint32_t crc = 0;
	uint64_t total = 0;
	size_t got;

	while ((got = fread(buf, 1, sizeof(buf), fp)) > 0) {
		crc = sample_cksum_update(crc, buf, got);
		total += got;
	}
	if (ferror(fp)) {
		fprintf(stderr, "cksum: %s: read error\n", name ? name : "stdin");
		return (1);
	}
	printf("%" PRIu32 " %" PRIu64 "%s%s\n", sample_cksum_final(crc, total), total,
	    name ? " " : "", name ? name : "");
	return (0);
}

int
main(int argc, char **argv)
{
	FILE *fp;
	int i, rval = 0;

	if (argc < 2)
		return (cksum_file(stdin, NULL));
	for (i = 1; i < argc; i++) {
		if ((fp = fopen(argv[i], "rb")) == NULL) {
			fprintf(stderr, "cksum: %s: %s\n", argv[i], strerror(errno));
			rval = 1;
			continue;
		}
		rval |= cksum_file(fp, argv[i]);
		fclose(fp);
	}
	return (rval);
}
