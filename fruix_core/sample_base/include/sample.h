/*
 * libsample: the small library shared by the programs of the sample base.
 */
#ifndef _SAMPLE_H_
#define _SAMPLE_H_

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* POSIX cksum(1): CRC-32 over the data, then over the length. */
uint32_t	sample_cksum_update(uint32_t crc, const void *buf, size_t len);
uint32_t	sample_cksum_final(uint32_t crc, uint64_t len);

/* The last component of a path, without modifying it ("" stays ""). */
const char	*sample_basename(const char *path);

/*
 * loader.conf(5)-style files: "name=value" or name="value" lines, '#'
 * comments.  The callback sees each setting in file order; a non-zero
 * return stops the walk.  Returns -1 when the file cannot be read.
 */
typedef int	sample_conf_cb(const char *name, const char *value, void *arg);
int		sample_conf_read(FILE *fp, sample_conf_cb *cb, void *arg);

/* "15.0-STABLE": the release this base was built as. */
const char	*sample_version(void);

#endif /* !_SAMPLE_H_ */
