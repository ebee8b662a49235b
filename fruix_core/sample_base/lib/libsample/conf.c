/*
 * Reading loader.conf(5)-style settings.
 */
#include <ctype.h>
#include <string.h>

#include "sample.h"

#define	CONF_LINE_MAX	1024

static char *
trim(char *s)
{
	char *end;

	while (isspace((unsigned char)*s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char)end[-1]))
		*--end = '\0';
	return (s);
}

int
sample_conf_read(FILE *fp, sample_conf_cb *cb, void *arg)
{
	char line[CONF_LINE_MAX];
	char *name, *value, *eq, *hash;
	size_t len;

	while (fgets(line, sizeof(line), fp) != NULL) {
		if ((hash = strchr(line, '#')) != NULL)
			*hash = '\0';
		name = trim(line);
		if (*name == '\0' || (eq = strchr(name, '=')) == NULL)
			continue;
		*eq = '\0';
		name = trim(name);
		value = trim(eq + 1);
		len = strlen(value);
		if (len >= 2 && value[0] == '"' && value[len - 1] == '"') {
			value[len - 1] = '\0';
			value++;
		}
		if (cb(name, value, arg) != 0)
			break;
	}
	return (ferror(fp) ? -1 : 0);
}
