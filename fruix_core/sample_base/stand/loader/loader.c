/*
 * loader: the boot loader of the sample base.  It reads loader.conf(5)
 * (/boot/defaults/loader.conf, or the file given with -f), shows what it
 * would load, and stops there.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "paths.h"
#include "sample.h"

struct boot {
	char	kernel[256];
	int	settings;
};

static int
setting(const char *name, const char *value, void *arg)
{
	struct boot *boot = arg;

	boot->settings++;
	printf("  %s=\"%s\"\n", name, value);
	if (strcmp(name, "kernel") == 0)
		snprintf(boot->kernel, sizeof(boot->kernel), "%s", value);
	return (0);
}

int
main(int argc, char **argv)
{
	const char *conf = _PATH_LOADER_CONF;
	struct boot boot = { "kernel", 0 };
	FILE *fp;
	int ch;

	while ((ch = getopt(argc, argv, "f:")) != -1) {
		if (ch != 'f') {
			fprintf(stderr, "usage: loader [-f loader.conf]\n");
			return (2);
		}
		conf = optarg;
	}
	printf("%s sample loader, Revision %s\n", SAMPLE_TYPE, sample_version());
	if ((fp = fopen(conf, "r")) == NULL) {
		fprintf(stderr, "loader: %s: %s\n", conf, strerror(errno));
		return (1);
	}
	printf("Reading %s\n", conf);
	if (sample_conf_read(fp, setting, &boot) != 0) {
		fprintf(stderr, "loader: %s: read error\n", conf);
		fclose(fp);
		return (1);
	}
	fclose(fp);
	printf("Loading /boot/%s/kernel (%d settings)\n", boot.kernel, boot.settings);
	return (0);
}
