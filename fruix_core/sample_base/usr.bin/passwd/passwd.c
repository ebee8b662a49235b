/*
 * passwd: installed set-user-ID (mode 4555) like the real one.  The sample
 * base has no password database, so it only reports who it runs as.
 */
#include <stdio.h>
#include <unistd.h>

#include "sample.h"

int
main(void)
{
	printf("passwd: sample base %s: uid %ld, effective uid %ld\n",
	    sample_version(), (long)getuid(), (long)geteuid());
	fprintf(stderr, "passwd: no password database in the sample base\n");
	return (1);
}
