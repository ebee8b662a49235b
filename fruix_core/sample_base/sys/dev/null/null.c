/*
 * null.ko: /dev/null and /dev/zero, as a loadable module of the sample
 * kernel.  Freestanding: no C library in a module.
 */
#include "sys/param.h"
#include "sys/module.h"

static int null_opens;

int
null_write(const void *buf, int len)
{
	(void)buf;
	return (len);
}

int
zero_read(void *buf, int len)
{
	unsigned char *p = buf;
	int i;

	for (i = 0; i < len; i++)
		p[i] = 0;
	return (len);
}

static int
null_modevent(const char *name, modeventtype_t what)
{
	(void)name;
	switch (what) {
	case MOD_LOAD:
		null_opens = 0;
		return (0);
	case MOD_UNLOAD:
		return (null_opens == 0 ? 0 : 16);
	default:
		return (0);
	}
}

static const moduledata_t null_mod = { "null", 1, null_modevent };
DECLARE_MODULE(null, null_mod);
