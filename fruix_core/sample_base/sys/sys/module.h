/*
 * Kernel modules of the sample base.
 *
 * A module declares one moduledata; DECLARE_MODULE gives it a well-known
 * symbol so that the loader can find it in the relocatable object.
 */
#ifndef _SYS_MODULE_H_
#define _SYS_MODULE_H_

#include "cdefs.h"		/* next to this header, installed or not */

typedef enum modeventtype {
	MOD_LOAD,
	MOD_UNLOAD,
	MOD_SHUTDOWN,
	MOD_QUIESCE
} modeventtype_t;

typedef int (*modeventhand_t)(const char *name, modeventtype_t what);

typedef struct moduledata {
	const char	*name;
	int		version;
	modeventhand_t	evhand;
} moduledata_t;

#define	DECLARE_MODULE(name, data)					\
	const moduledata_t *const __CONCAT(__module_, name) __used =	\
	    &(data)

/* Modules compiled into the kernel (kern_module.c). */
extern const moduledata_t *const kern_builtin_modules[];

int	module_register_all(modeventtype_t what);

#endif /* !_SYS_MODULE_H_ */
