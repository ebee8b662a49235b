/*
 * The CRC of POSIX cksum(1): polynomial 0x04C11DB7, most significant bit
 * first, the length appended in as few bytes as it needs, the result
 * complemented.
 */
#include "sample.h"

#define	CKSUM_POLY	0x04C11DB7u

static uint32_t
cksum_byte(uint32_t crc, unsigned char c)
{
	int bit;

	crc ^= (uint32_t)c << 24;
	for (bit = 0; bit < 8; bit++)
		crc = (crc & 0x80000000u) ? (crc << 1) ^ CKSUM_POLY : crc << 1;
	return (crc);
}

uint32_t
sample_cksum_update(uint32_t crc, const void *buf, size_t len)
{
	const unsigned char *p = buf;

	while (len-- > 0)
		crc = cksum_byte(crc, *p++);
	return (crc);
}

uint32_t
sample_cksum_final(uint32_t crc, uint64_t len)
{
	for (; len != 0; len >>= 8)
		crc = cksum_byte(crc, (unsigned char)(len & 0xff));
	return (~crc);
}
