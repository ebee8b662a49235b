# Settings shared by the world and kernel builds of the sample base.
#
# Assignments here override the environment on purpose: a build never picks up
# CC, CFLAGS or LDFLAGS from the caller (the Fruix build environment removes
# them as well).  Everything that reaches the compiler is written down below.

# Base metadata, as FreeBSD's sys/conf/newvers.sh would give it.
TYPE = FreeBSD
REVISION = 15.0
BRANCH = STABLE

# The conf files live in sys/$(TARGET)/conf as FreeBSD's do; the code itself is
# architecture-neutral and compiled for the build machine.
TARGET = amd64
KERNCONF ?= GENERIC
KERNCONFDIR = $(SRCTOP)/sys/$(TARGET)/conf

# Fixed, so that nothing can embed the time of the build (see -Wdate-time).
SOURCE_DATE_EPOCH = 1735689600

OBJTOP = $(MAKEOBJDIRPREFIX)/sample-base
WOBJ = $(OBJTOP)/world
KOBJ = $(OBJTOP)/sys/$(KERNCONF)

CC = cc
AR = ar
INSTALL = install

# The prefix maps make the bytes independent of where the source tree and the
# object directory are; --build-id=none and ar's D flag remove the rest.
PREFIX_MAPS = -ffile-prefix-map=$(SRCTOP)=/usr/src -ffile-prefix-map=$(OBJTOP)=/usr/obj \
	-fdebug-prefix-map=$(SRCTOP)=/usr/src -fdebug-prefix-map=$(OBJTOP)=/usr/obj
CFLAGS = -O2 -std=c11 -Wall -Wdate-time -Werror=date-time -D_POSIX_C_SOURCE=200809L \
	$(PREFIX_MAPS) -iquote $(SRCTOP)/include \
	-DSAMPLE_VERSION='"$(REVISION)-$(BRANCH)"' -DSAMPLE_TYPE='"$(TYPE)"'
LDFLAGS = -Wl,--build-id=none
ARFLAGS = -crsD

# Run every compiler with the fixed epoch in its environment.
COMPILE = SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(CC)

INSTALL_PROGRAM = $(INSTALL) -c -m 555
INSTALL_SETUID = $(INSTALL) -c -m 4555
INSTALL_DATA = $(INSTALL) -c -m 444
INSTALL_DIR = $(INSTALL) -d -m 755

# Guards, run by the public targets before any work (see Makefile).
CHECK_OBJDIR = if [ -z "$(MAKEOBJDIRPREFIX)" ]; then \
	  echo "sample base: MAKEOBJDIRPREFIX is not set; put the absolute path of an object directory in the environment" >&2; \
	  exit 1; fi; \
	case "$(MAKEOBJDIRPREFIX)" in /*) ;; \
	  *) echo "sample base: MAKEOBJDIRPREFIX must be an absolute path, not '$(MAKEOBJDIRPREFIX)'" >&2; exit 1;; \
	esac
CHECK_KERNCONF = case "$(KERNCONF)" in ""|.*|*[!A-Za-z0-9_.-]*) \
	  echo "sample base: invalid KERNCONF '$(KERNCONF)'" >&2; exit 1;; \
	esac; \
	if [ ! -f "$(KERNCONFDIR)/$(KERNCONF)" ]; then \
	  echo "sample base: unknown KERNCONF '$(KERNCONF)': there is no sys/$(TARGET)/conf/$(KERNCONF) (known: $$(cd $(KERNCONFDIR) && echo *))" >&2; \
	  exit 1; fi
CHECK_DESTDIR = case "$(DESTDIR)" in /?*) ;; \
	  "") echo "sample base: DESTDIR is not set; the sample base never installs into /" >&2; exit 1;; \
	  *) echo "sample base: DESTDIR must be an absolute path other than /, not '$(DESTDIR)'" >&2; exit 1;; \
	esac
CHECK_WORLD_BUILT = if [ ! -f "$(WOBJ)/.buildworld.done" ]; then \
	  echo "sample base: no world in $(WOBJ); run buildworld first" >&2; exit 1; fi
CHECK_KERNEL_BUILT = if [ ! -f "$(KOBJ)/.buildkernel.done" ]; then \
	  echo "sample base: no kernel $(KERNCONF) in $(KOBJ); run buildkernel KERNCONF=$(KERNCONF) first" >&2; exit 1; fi
