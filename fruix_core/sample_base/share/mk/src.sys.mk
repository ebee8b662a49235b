# src.conf, as FreeBSD's share/mk/src.sys.mk reads it: SRCCONF (default
# /etc/src.conf) is included when it exists or was named explicitly.
SRCCONF?=	/etc/src.conf
.if !empty(SRCCONF) && \
    (exists(${SRCCONF}) || ${SRCCONF} != "/etc/src.conf") && \
    !target(_srcconf_included_)
.sinclude "${SRCCONF}"
_srcconf_included_:	.NOTMAIN
.endif
