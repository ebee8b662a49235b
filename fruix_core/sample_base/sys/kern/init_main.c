/*
 * The sample kernel: "boots" by printing its version and configuration
 * (generated from sys/<arch>/conf/$KERNCONF into kern_conf.h) and loading
 * its built-in modules.
 */
#include <stdio.h>

#include "sys/param.h"
#include "sys/module.h"

#include "kern_conf.h"

#ifndef KERN_IDENT
#define	KERN_IDENT	KERN_CONFNAME
#endif

static const char copyright[] =
    "Copyright (c) The Fruix sample base authors.\n"
    "Modelled on the FreeBSD base system.";
static const char version[] =
    SAMPLE_TYPE " " SAMPLE_VERSION " #0: " KERN_IDENT " (config " KERN_CONFNAME ")";

int
main(void)
{
	size_t i;

	printf("%s\n%s\n", copyright, version);
	printf("__SAMPLE_version %d\n", __SAMPLE_version);
	for (i = 0; kern_options[i] != NULL; i++)
		printf("option %s\n", kern_options[i]);
	for (i = 0; kern_devices[i] != NULL; i++)
		printf("device %s\n", kern_devices[i]);
	return (module_register_all(MOD_LOAD) == 0 ? 0 : 1);
}
