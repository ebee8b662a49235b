# Build options, FreeBSD style: WITHOUT_<OPT> in src.conf (or the
# environment / command line) turns MK_<OPT> off.  The sample has one.
.for _opt in WC
.if defined(WITHOUT_${_opt})
MK_${_opt}:=	no
.else
MK_${_opt}?=	yes
.endif
.endfor
