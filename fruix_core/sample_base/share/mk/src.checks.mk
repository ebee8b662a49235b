# Paths and guards shared by the top-level Makefile and Makefile.inc1.
# Every message begins with "sample base:".

TARGET?=	amd64
KERNCONF?=	GENERIC
KERNCONFDIR=	${SRCTOP}/sys/${TARGET}/conf

OBJTOP=		${MAKEOBJDIRPREFIX}/sample-base
WOBJ=		${OBJTOP}/world
KOBJ=		${OBJTOP}/sys/${KERNCONF}

# Makefile.inc1: "METALOG ... (default: ${DESTDIR}/METALOG)", used when NO_ROOT is set.
.if defined(NO_ROOT)
METALOG?=	${DESTDIR}/METALOG
.endif

CHECK_OBJDIR= if [ -z "${MAKEOBJDIRPREFIX}" ]; then \
	  echo "sample base: MAKEOBJDIRPREFIX is not set; put the absolute path of an object directory in the environment" >&2; \
	  exit 1; fi; \
	case "${MAKEOBJDIRPREFIX}" in /*) ;; \
	  *) echo "sample base: MAKEOBJDIRPREFIX must be an absolute path, not '${MAKEOBJDIRPREFIX}'" >&2; exit 1;; \
	esac
CHECK_KERNCONF= case "${KERNCONF}" in ""|.*|*[!A-Za-z0-9_.-]*) \
	  echo "sample base: invalid KERNCONF '${KERNCONF}'" >&2; exit 1;; \
	esac; \
	if [ ! -f "${KERNCONFDIR}/${KERNCONF}" ]; then \
	  echo "sample base: unknown KERNCONF '${KERNCONF}': there is no sys/${TARGET}/conf/${KERNCONF} (known: $$(cd ${KERNCONFDIR} && echo *))" >&2; \
	  exit 1; fi
CHECK_DESTDIR= case "${DESTDIR}" in /?*) ;; \
	  "") echo "sample base: DESTDIR is not set; the sample base never installs into /" >&2; exit 1;; \
	  *) echo "sample base: DESTDIR must be an absolute path other than /, not '${DESTDIR}'" >&2; exit 1;; \
	esac
.if defined(NO_ROOT)
CHECK_METALOG= case "${METALOG}" in /?*) ;; \
	  *) echo "sample base: METALOG must be an absolute path, not '${METALOG}'" >&2; exit 1;; \
	esac
.else
CHECK_METALOG= :
.endif
CHECK_WORLD_BUILT= if [ ! -f "${WOBJ}/.buildworld.done" ]; then \
	  echo "sample base: no world in ${WOBJ}; run buildworld first" >&2; exit 1; fi
CHECK_KERNEL_BUILT= if [ ! -f "${KOBJ}/.buildkernel.done" ]; then \
	  echo "sample base: no kernel ${KERNCONF} in ${KOBJ}; run buildkernel KERNCONF=${KERNCONF} first" >&2; exit 1; fi
