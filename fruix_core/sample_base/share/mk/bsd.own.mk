# Owners, groups, modes and the install command, named as in FreeBSD's
# share/mk/bsd.own.mk (BINOWN, BINGRP, BINMODE, NOBINMODE, SHAREOWN, ...).

BINOWN?=	root
BINGRP?=	wheel
BINMODE?=	555
NOBINMODE?=	444
LIBOWN?=	${BINOWN}
LIBGRP?=	${BINGRP}
LIBMODE?=	${NOBINMODE}
SHAREOWN?=	root
SHAREGRP?=	wheel
SHAREMODE?=	${NOBINMODE}
CONFOWN?=	root
CONFGRP?=	wheel
CONFMODE?=	644
KMODOWN?=	${BINOWN}
KMODGRP?=	${BINGRP}
KMODMODE?=	${BINMODE}
DIRMODE?=	755

# The tree brings its own install(1), as FreeBSD's build stages use
# tools/install.sh: the build machine's install may lack -U/-M/-D/-N.
INSTALL?=	sh ${SRCTOP}/tools/install.sh

# Makefile.inc1: with NO_ROOT, "INSTALLFLAGS+= -U -M ${METALOG} -D
# ${INSTALL_DDIR}"; with DB_FROM_SRC, "INSTALLFLAGS+= -N ${.CURDIR}/etc".
INSTALLFLAGS?=
.if defined(NO_ROOT)
INSTALLFLAGS+=	-U -M ${METALOG} -D ${DESTDIR}
.endif
.if defined(DB_FROM_SRC)
INSTALLFLAGS+=	-N ${SRCTOP}/etc
.endif
_INSTALL=	${INSTALL} ${INSTALLFLAGS}

INSTALL_PROGRAM=	${_INSTALL} -c -o ${BINOWN} -g ${BINGRP} -m ${BINMODE}
INSTALL_DATA=		${_INSTALL} -c -o ${SHAREOWN} -g ${SHAREGRP} -m ${SHAREMODE}
INSTALL_LIB=		${_INSTALL} -c -o ${LIBOWN} -g ${LIBGRP} -m ${LIBMODE}
INSTALL_CONF=		${_INSTALL} -c -o ${CONFOWN} -g ${CONFGRP} -m ${CONFMODE}
INSTALL_KMOD=		${_INSTALL} -c -o ${KMODOWN} -g ${KMODGRP} -m ${KMODMODE}
INSTALL_DIR=		${_INSTALL} -d -o root -g wheel -m ${DIRMODE}
# bsd.own.mk: INSTALL_LINK is "install -l h", INSTALL_RSYMLINK "install -l rs".
INSTALL_LINK=		${_INSTALL} -l h
INSTALL_SYMLINK=	${_INSTALL} -l s
