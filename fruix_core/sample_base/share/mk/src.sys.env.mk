# Early settings, as FreeBSD's share/mk/src.sys.env.mk: SRC_ENV_CONF is the
# file for options that may only come from the environment.
SRC_ENV_CONF?=	/etc/src-env.conf
.if !empty(SRC_ENV_CONF) && !target(_src_env_conf_included_)
.-include "${SRC_ENV_CONF}"
_src_env_conf_included_:	.NOTMAIN
.endif
