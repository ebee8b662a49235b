/*
 * Compiler helpers of the sample kernel and its modules.
 */
#ifndef _SYS_CDEFS_H_
#define _SYS_CDEFS_H_

#define	__dead2			__attribute__((__noreturn__))
#define	__used			__attribute__((__used__))
#define	__printflike(f, a)	__attribute__((__format__(__printf__, f, a)))
#define	__section(s)		__attribute__((__section__(s)))
#define	__CONCAT(a, b)		a##b
#define	__STRING(x)		#x

#endif /* !_SYS_CDEFS_H_ */
