# World: libsample, the programs of /bin, /usr/bin and the loader
# (buildworld), installed with headers and data by installworld; the /etc
# files by distribution.
#
# One explicit rule per file: both makes understand it, and under -j every
# independent object is built in parallel.  Sources are named in full in each
# recipe because the two makes disagree on $< outside suffix rules.

HEADERS = $(SRCTOP)/include/sample.h $(SRCTOP)/include/paths.h

LIBSAMPLE = $(WOBJ)/lib/libsample/libsample.a
LIBSAMPLE_OBJS = $(WOBJ)/lib/libsample/cksum.o $(WOBJ)/lib/libsample/conf.o \
	$(WOBJ)/lib/libsample/str.o

PROGRAMS = $(WOBJ)/bin/sh/sh $(WOBJ)/bin/echo/echo $(WOBJ)/bin/test/test \
	$(WOBJ)/usr.bin/cksum/cksum $(WOBJ)/usr.bin/wc/wc $(WOBJ)/usr.bin/passwd/passwd \
	$(WOBJ)/stand/loader/loader

.PHONY: _buildworld _installworld _distribution

_buildworld: $(LIBSAMPLE) $(PROGRAMS)
	@touch $(WOBJ)/.buildworld.done

# ---- lib/libsample

$(WOBJ)/lib/libsample/cksum.o: $(SRCTOP)/lib/libsample/cksum.c $(HEADERS)
	@mkdir -p $(@D)
	$(COMPILE) $(CFLAGS) -c -o $@ $(SRCTOP)/lib/libsample/cksum.c

$(WOBJ)/lib/libsample/conf.o: $(SRCTOP)/lib/libsample/conf.c $(HEADERS)
	@mkdir -p $(@D)
	$(COMPILE) $(CFLAGS) -c -o $@ $(SRCTOP)/lib/libsample/conf.c

$(WOBJ)/lib/libsample/str.o: $(SRCTOP)/lib/libsample/str.c $(HEADERS)
	@mkdir -p $(@D)
	$(COMPILE) $(CFLAGS) -c -o $@ $(SRCTOP)/lib/libsample/str.c

$(LIBSAMPLE): $(LIBSAMPLE_OBJS)
	@rm -f $@
	$(AR) $(ARFLAGS) $@ $(LIBSAMPLE_OBJS)

# ---- programs: one source file each, linked against libsample

$(WOBJ)/bin/sh/sh: $(SRCTOP)/bin/sh/sh.c $(HEADERS) $(LIBSAMPLE)
	@mkdir -p $(@D)
	$(COMPILE) $(CFLAGS) $(LDFLAGS) -o $@ $(SRCTOP)/bin/sh/sh.c $(LIBSAMPLE)

$(WOBJ)/bin/echo/echo: $(SRCTOP)/bin/echo/echo.c $(HEADERS) $(LIBSAMPLE)
	@mkdir -p $(@D)
	$(COMPILE) $(CFLAGS) $(LDFLAGS) -o $@ $(SRCTOP)/bin/echo/echo.c $(LIBSAMPLE)

$(WOBJ)/bin/test/test: $(SRCTOP)/bin/test/test.c $(HEADERS) $(LIBSAMPLE)
	@mkdir -p $(@D)
	$(COMPILE) $(CFLAGS) $(LDFLAGS) -o $@ $(SRCTOP)/bin/test/test.c $(LIBSAMPLE)

$(WOBJ)/usr.bin/cksum/cksum: $(SRCTOP)/usr.bin/cksum/cksum.c $(HEADERS) $(LIBSAMPLE)
	@mkdir -p $(@D)
	$(COMPILE) $(CFLAGS) $(LDFLAGS) -o $@ $(SRCTOP)/usr.bin/cksum/cksum.c $(LIBSAMPLE)

$(WOBJ)/usr.bin/wc/wc: $(SRCTOP)/usr.bin/wc/wc.c $(HEADERS) $(LIBSAMPLE)
	@mkdir -p $(@D)
	$(COMPILE) $(CFLAGS) $(LDFLAGS) -o $@ $(SRCTOP)/usr.bin/wc/wc.c $(LIBSAMPLE)

$(WOBJ)/usr.bin/passwd/passwd: $(SRCTOP)/usr.bin/passwd/passwd.c $(HEADERS) $(LIBSAMPLE)
	@mkdir -p $(@D)
	$(COMPILE) $(CFLAGS) $(LDFLAGS) -o $@ $(SRCTOP)/usr.bin/passwd/passwd.c $(LIBSAMPLE)

$(WOBJ)/stand/loader/loader: $(SRCTOP)/stand/loader/loader.c $(HEADERS) $(LIBSAMPLE)
	@mkdir -p $(@D)
	$(COMPILE) $(CFLAGS) $(LDFLAGS) -o $@ $(SRCTOP)/stand/loader/loader.c $(LIBSAMPLE)

# ---- installworld: the hierarchy first, then files with explicit modes.
# bin/[ is a hard link to bin/test; usr/bin/echo a relative symbolic link.

_installworld:
	$(INSTALL_DIR) $(DESTDIR)/bin $(DESTDIR)/boot $(DESTDIR)/boot/defaults $(DESTDIR)/dev \
	    $(DESTDIR)/etc $(DESTDIR)/etc/defaults $(DESTDIR)/usr $(DESTDIR)/usr/bin \
	    $(DESTDIR)/usr/include $(DESTDIR)/usr/include/sys $(DESTDIR)/usr/lib \
	    $(DESTDIR)/usr/share $(DESTDIR)/usr/share/misc
	$(INSTALL) -d -m 1777 $(DESTDIR)/tmp
	$(INSTALL_PROGRAM) $(WOBJ)/bin/sh/sh $(DESTDIR)/bin/sh
	$(INSTALL_PROGRAM) $(WOBJ)/bin/echo/echo $(DESTDIR)/bin/echo
	$(INSTALL_PROGRAM) $(WOBJ)/bin/test/test $(DESTDIR)/bin/test
	rm -f "$(DESTDIR)/bin/["
	ln "$(DESTDIR)/bin/test" "$(DESTDIR)/bin/["
	$(INSTALL_PROGRAM) $(WOBJ)/usr.bin/cksum/cksum $(DESTDIR)/usr/bin/cksum
	$(INSTALL_PROGRAM) $(WOBJ)/usr.bin/wc/wc $(DESTDIR)/usr/bin/wc
	$(INSTALL_SETUID) $(WOBJ)/usr.bin/passwd/passwd $(DESTDIR)/usr/bin/passwd
	rm -f $(DESTDIR)/usr/bin/echo
	ln -s ../../bin/echo $(DESTDIR)/usr/bin/echo
	$(INSTALL_DATA) $(LIBSAMPLE) $(DESTDIR)/usr/lib/libsample.a
	$(INSTALL_DATA) $(SRCTOP)/include/sample.h $(DESTDIR)/usr/include/sample.h
	$(INSTALL_DATA) $(SRCTOP)/include/paths.h $(DESTDIR)/usr/include/paths.h
	$(INSTALL_DATA) $(SRCTOP)/sys/sys/cdefs.h $(DESTDIR)/usr/include/sys/cdefs.h
	$(INSTALL_DATA) $(SRCTOP)/sys/sys/module.h $(DESTDIR)/usr/include/sys/module.h
	$(INSTALL_DATA) $(SRCTOP)/sys/sys/param.h $(DESTDIR)/usr/include/sys/param.h
	$(INSTALL_PROGRAM) $(WOBJ)/stand/loader/loader $(DESTDIR)/boot/loader
	$(INSTALL_DATA) $(SRCTOP)/stand/defaults/loader.conf $(DESTDIR)/boot/defaults/loader.conf
	$(INSTALL_DATA) $(SRCTOP)/share/termcap/termcap $(DESTDIR)/usr/share/misc/termcap

# ---- distribution: /etc.  etc/termcap is an absolute symbolic link, as on FreeBSD.

_distribution:
	$(INSTALL_DIR) $(DESTDIR)/etc $(DESTDIR)/etc/defaults
	$(INSTALL_DATA) $(SRCTOP)/etc/defaults/rc.conf $(DESTDIR)/etc/defaults/rc.conf
	$(INSTALL_DATA) $(SRCTOP)/etc/group $(DESTDIR)/etc/group
	$(INSTALL_DATA) $(SRCTOP)/etc/motd $(DESTDIR)/etc/motd
	$(INSTALL_DATA) $(SRCTOP)/etc/passwd $(DESTDIR)/etc/passwd
	$(INSTALL_DATA) $(SRCTOP)/etc/rc.conf $(DESTDIR)/etc/rc.conf
	$(INSTALL_DATA) $(SRCTOP)/etc/shells $(DESTDIR)/etc/shells
	rm -f $(DESTDIR)/etc/termcap
	ln -s /usr/share/misc/termcap $(DESTDIR)/etc/termcap
