/*
 * Well-known paths of the sample base.
 */
#ifndef _PATHS_H_
#define _PATHS_H_

#define	_PATH_BSHELL		"/bin/sh"
#define	_PATH_DEFPATH		"/usr/bin:/bin"
#define	_PATH_DEVNULL		"/dev/null"
#define	_PATH_KERNEL		"/boot/kernel/kernel"
#define	_PATH_LOADER_CONF	"/boot/defaults/loader.conf"
#define	_PATH_MODULES		"/boot/kernel"
#define	_PATH_TMP		"/tmp/"

#endif /* !_PATHS_H_ */
