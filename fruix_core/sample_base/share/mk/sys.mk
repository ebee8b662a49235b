# The system makefile of the sample base, read before Makefile.inc1 because
# the top-level Makefile runs it with "make -m ${SRCTOP}/share/mk".  Like
# FreeBSD's share/mk/sys.mk it pulls in the site configuration, and only
# what the caller names:
#
#   SRC_ENV_CONF (default /etc/src-env.conf)  early, src.sys.env.mk
#   __MAKE_CONF  (default /etc/make.conf)     sys.mk itself
#   SRCCONF      (default /etc/src.conf)      src.sys.mk
#
# A Fruix build pins all three (to /dev/null unless the operator declares
# files, whose digests enter the build policy), so a guest's /etc never
# changes what is built.

.include <src.sys.env.mk>

.SUFFIXES:
SHELL?=		sh

# FreeBSD's sys.mk: "__MAKE_CONF?=/etc/make.conf", included when it exists.
__MAKE_CONF?=	/etc/make.conf
.if exists(${__MAKE_CONF})
.include "${__MAKE_CONF}"
.endif

.include <src.sys.mk>
