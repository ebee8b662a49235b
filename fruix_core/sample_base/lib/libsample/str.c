/*
 * String helpers of libsample.
 */
#include <string.h>

#include "sample.h"

const char *
sample_basename(const char *path)
{
	const char *slash = strrchr(path, '/');

	return (slash == NULL ? path : slash + 1);
}

const char *
sample_version(void)
{
	return (SAMPLE_VERSION);
}
