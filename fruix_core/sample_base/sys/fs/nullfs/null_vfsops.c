/*
 * nullfs.ko: the loopback file system of the sample kernel, as a loadable
 * module.  Only its module glue and mount-option check are here.
 */
#include "sys/param.h"
#include "sys/module.h"

static int nullfs_mounts;

int
nullfs_check_target(const char *target)
{
	int len = 0;

	if (target == 0 || target[0] != '/')
		return (22);	/* EINVAL */
	while (target[len] != '\0')
		if (++len >= MAXPATHLEN)
			return (63);	/* ENAMETOOLONG */
	return (0);
}

static int
nullfs_modevent(const char *name, modeventtype_t what)
{
	(void)name;
	if (what == MOD_UNLOAD && nullfs_mounts > 0)
		return (16);	/* EBUSY */
	return (0);
}

static const moduledata_t nullfs_mod = { "nullfs", 1, nullfs_modevent };
DECLARE_MODULE(nullfs, nullfs_mod);
