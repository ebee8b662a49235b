/*
 * System parameters of the sample base.
 */
#ifndef _SYS_PARAM_H_
#define _SYS_PARAM_H_

/* Like __FreeBSD_version: major * 100000 + minor * 1000 + patch. */
#define	__SAMPLE_version	1500000

#define	MAXPATHLEN	1024
#define	MAXCOMLEN	19
#define	NBBY		8

#define	nitems(x)	(sizeof((x)) / sizeof((x)[0]))
#define	MIN(a, b)	(((a) < (b)) ? (a) : (b))
#define	MAX(a, b)	(((a) > (b)) ? (a) : (b))

#endif /* !_SYS_PARAM_H_ */
