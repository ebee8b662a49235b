/*
 * Modules compiled into the sample kernel and their registration.
 */
#include <stdio.h>

#include "sys/param.h"
#include "sys/module.h"

static int
kernel_modevent(const char *name, modeventtype_t what)
{
	if (what == MOD_LOAD)
		printf("module %s: loaded\n", name);
	return (0);
}

static const moduledata_t kernel_mod = { "kernel", __SAMPLE_version, kernel_modevent };
static const moduledata_t pseudofs_mod = { "pseudofs", 1, kernel_modevent };

const moduledata_t *const kern_builtin_modules[] = {
	&kernel_mod,
	&pseudofs_mod,
	NULL
};

int
module_register_all(modeventtype_t what)
{
	const moduledata_t *const *mp;
	int error;

	for (mp = kern_builtin_modules; *mp != NULL; mp++) {
		if ((error = (*mp)->evhand((*mp)->name, what)) != 0) {
			printf("module %s: error %d\n", (*mp)->name, error);
			return (error);
		}
	}
	return (0);
}
