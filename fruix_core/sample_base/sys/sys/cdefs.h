/*
 * Compiler helpers of the sample kernel and its modules.
 */
#ifndef _SYS_CDEFS_H_
#define _SYS_CDEFS_H_

#define	__dead2			__attribute__((__noreturn__))
#define	__used			__attribute__((__used__))
#define	__printflike(f, a)	__attribute__((__format__(__printf__, f, a)))
#define	__section(s)		__attribute__((__section__(s)))
/* The C library's own <sys/cdefs.h> may have defined these already. */
#ifndef __CONCAT
#define	__CONCAT(a, b)		a##b
#endif
#ifndef __STRING
#define	__STRING(x)		#x
#endif

#endif /* !_SYS_CDEFS_H_ */
