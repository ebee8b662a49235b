#!/bin/sh
# install(1) for the sample base: the part of FreeBSD's install that its
# makefiles use, in POSIX sh, so that the tree builds on any machine (FreeBSD's
# own build stages use tools/install.sh for the same reason).
#
#   install [-cU] [-M log] [-D dest] [-N dbdir] [-o owner] [-g group] [-m mode]
#           [-f flags] file target
#   install -l h|s [...] source target        (hard or symbolic link)
#   install -d [-U] [...] directory ...
#
# -U installs unprivileged: no chown, no chflags, and no set-user-ID,
# set-group-ID or sticky bit on the installed file; -M appends one line per
# installed node to the metadata log, the way FreeBSD's install -M does
# (usr.bin/xinstall/xinstall.c, metadata_log):
#
#   ./usr/bin/passwd type=file uname=root gname=wheel mode=04555 size=9184 flags=schg
#
# with the -D prefix removed from the path.  -N resolves owner and group names
# in DIR/master.passwd and DIR/group instead of the build machine's databases.
# Numeric modes only; paths must not need vis(3) encoding.

prog=install
die() { echo "$prog: $*" >&2; exit 1; }
usage() {
	echo "usage: install [-cdU] [-M log] [-D dest] [-N dbdir] [-o owner] [-g group] [-m mode] [-f flags] [-l h|s] source ... target" >&2
	exit 64
}

dodir=; unpriv=; metalog=; destdir=; dbdir=; owner=; group=; mode=0755; haveopt_m=
fflags=; linkmode=
while getopts cdUM:D:N:o:g:m:f:l: opt; do
	case $opt in
	c) ;;
	d) dodir=1 ;;
	U) unpriv=1 ;;
	M) metalog=$OPTARG ;;
	D) destdir=$OPTARG ;;
	N) dbdir=$OPTARG ;;
	o) owner=$OPTARG ;;
	g) group=$OPTARG ;;
	m) mode=$OPTARG; haveopt_m=1 ;;
	f) fflags=$OPTARG ;;
	l) linkmode=$OPTARG ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))

case $mode in
''|*[!0-7]*) die "invalid file mode: $mode" ;;
esac
mode=$(printf '%#o' "0$mode")

# Owner and group must exist in the named databases (DB_FROM_SRC), like
# FreeBSD's install -N.
lookup() {	# file name -> numeric id, or nothing
	awk -F: -v name="$2" '$1 == name { print $3; exit }' "$1"
}
uid=; gid=
if [ -n "$dbdir" ]; then
	[ -f "$dbdir/master.passwd" ] || die "$dbdir/master.passwd: no such file"
	[ -f "$dbdir/group" ] || die "$dbdir/group: no such file"
	if [ -n "$owner" ]; then
		uid=$(lookup "$dbdir/master.passwd" "$owner")
		[ -n "$uid" ] || die "unknown user $owner"
	fi
	if [ -n "$group" ]; then
		gid=$(lookup "$dbdir/group" "$group")
		[ -n "$gid" ] || die "unknown group $group"
	fi
fi

metadata_log() {	# path type [link-target]
	[ -n "$metalog" ] || return 0
	p=$1
	if [ -n "$destdir" ]; then
		case $p in
		"$destdir") p= ;;
		"$destdir"/*) p=${p#"$destdir"} ;;
		esac
	fi
	while :; do
		case $p in /*) p=${p#/} ;; *) break ;; esac
	done
	line=.${p:+/$p}" type=$2"
	[ -n "$owner" ] && line="$line uname=$owner"
	[ -n "$group" ] && line="$line gname=$group"
	line="$line mode=$mode"
	[ "$2" = link ] && line="$line link=$3"
	[ "$2" = file ] && line="$line size=$(wc -c < "$1" | tr -d ' ')"
	[ -n "$fflags" ] && line="$line flags=$fflags"
	printf '%s\n' "$line" >> "$metalog" || die "cannot write $metalog"
}

# Ownership, mode and flags of an installed node (privileged installs only
# change the owner; -U keeps the permission bits only).
settle() {	# path
	if [ -n "$unpriv" ]; then
		chmod "$(printf '%o' $((mode & 0777)))" "$1" || exit 1
		return 0
	fi
	if [ "$(id -u)" = 0 ] && { [ -n "$owner" ] || [ -n "$group" ]; }; then
		chown "${uid:-$owner}${group:+:${gid:-$group}}" "$1" || exit 1
	fi
	chmod "$mode" "$1" || exit 1
	if [ -n "$fflags" ] && command -v chflags >/dev/null 2>&1; then
		chflags "$fflags" "$1" || exit 1
	fi
}

# The permission bits of an existing file, from ls -l (POSIX has no stat).
file_mode() {
	# shellcheck disable=SC2012  # POSIX has no stat(1); the mode column of ls -l is portable
	ls -ld "$1" | awk '{
		m = 0; s = substr($1, 2, 9)
		for (i = 1; i <= 9; i++) { c = substr(s, i, 1); m = m * 2 + (c != "-" && c != "S" && c != "T") }
		printf "0%o\n", m }'
}

if [ -n "$dodir" ]; then
	[ $# -ge 1 ] || usage
	for dir; do
		mkdir -p "$dir" || exit 1
		# xinstall.c: an unprivileged install leaves a directory's mode alone.
		[ -n "$unpriv" ] || settle "$dir"
		metadata_log "$dir" dir
	done
	exit 0
fi

[ $# -eq 2 ] || usage
from=$1 to=$2
[ -d "$to" ] && [ ! -L "$to" ] && to=$to/${from##*/}

case $linkmode in
h)
	[ -f "$from" ] || die "$from: not a regular file"
	rm -f "$to" && ln "$from" "$to" || exit 1
	# xinstall.c, makelink: a hard link is logged as a file with the
	# underlying mode unless -m is given, and no owner unless -o/-g.
	[ -n "$haveopt_m" ] || mode=$(file_mode "$to")
	metadata_log "$to" file
	;;
s)
	rm -f "$to" && ln -s "$from" "$to" || exit 1
	metadata_log "$to" link "$from"
	;;
'')
	[ -f "$from" ] || die "$from: not a regular file"
	tmp=$(dirname "$to")/INS@$$
	cp "$from" "$tmp" || { rm -f "$tmp"; exit 1; }
	settle "$tmp"
	mv -f "$tmp" "$to" || { rm -f "$tmp"; exit 1; }
	metadata_log "$to" file
	;;
*)
	die "unsupported link mode -l $linkmode"
	;;
esac
