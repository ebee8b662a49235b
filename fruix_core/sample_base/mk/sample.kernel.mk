# Kernel: the configuration sys/$(TARGET)/conf/$(KERNCONF) becomes kern_conf.h,
# compiled into the kernel together with the name of the configuration, so
# every KERNCONF gives a different kernel.  Modules are relocatable objects
# (ld -r), like FreeBSD's amd64 .ko files.

SYS_HEADERS = $(SRCTOP)/sys/sys/cdefs.h $(SRCTOP)/sys/sys/module.h $(SRCTOP)/sys/sys/param.h

KERN_CFLAGS = $(CFLAGS) -iquote $(SRCTOP)/sys -iquote $(KOBJ) -DKERN_CONFNAME='"$(KERNCONF)"'
MODULE_CFLAGS = $(CFLAGS) -ffreestanding -fno-common -iquote $(SRCTOP)/sys

KERNEL_OBJS = $(KOBJ)/init_main.o $(KOBJ)/kern_module.o
MODULES = $(KOBJ)/modules/null/null.ko $(KOBJ)/modules/nullfs/nullfs.ko

.PHONY: _buildkernel _installkernel

_buildkernel: $(KOBJ)/kernel $(MODULES)
	@touch $(KOBJ)/.buildkernel.done

# Only the option names reach the header: comments and unknown lines are dropped.
$(KOBJ)/kern_conf.h: $(KERNCONFDIR)/$(KERNCONF)
	@mkdir -p $(@D)
	{ echo '/* Generated from sys/$(TARGET)/conf/$(KERNCONF); do not edit. */'; \
	  sed -n 's/^ident[[:space:]][[:space:]]*\([A-Za-z0-9_]*\).*/#define KERN_IDENT "\1"/p' \
	    $(KERNCONFDIR)/$(KERNCONF); \
	  echo 'static const char *const kern_options[] = {'; \
	  sed -n 's/^options[[:space:]][[:space:]]*\([A-Za-z0-9_=]*\).*/    "\1",/p' \
	    $(KERNCONFDIR)/$(KERNCONF); \
	  echo '    0'; echo '};'; \
	  echo 'static const char *const kern_devices[] = {'; \
	  sed -n 's/^device[[:space:]][[:space:]]*\([A-Za-z0-9_]*\).*/    "\1",/p' \
	    $(KERNCONFDIR)/$(KERNCONF); \
	  echo '    0'; echo '};'; \
	} > $@.tmp
	mv $@.tmp $@

$(KOBJ)/init_main.o: $(SRCTOP)/sys/kern/init_main.c $(KOBJ)/kern_conf.h $(SYS_HEADERS)
	@mkdir -p $(@D)
	$(COMPILE) $(KERN_CFLAGS) -c -o $@ $(SRCTOP)/sys/kern/init_main.c

$(KOBJ)/kern_module.o: $(SRCTOP)/sys/kern/kern_module.c $(SYS_HEADERS)
	@mkdir -p $(@D)
	$(COMPILE) $(KERN_CFLAGS) -c -o $@ $(SRCTOP)/sys/kern/kern_module.c

$(KOBJ)/kernel: $(KERNEL_OBJS)
	$(COMPILE) $(LDFLAGS) -o $@ $(KERNEL_OBJS)

$(KOBJ)/modules/null/null.o: $(SRCTOP)/sys/dev/null/null.c $(SYS_HEADERS)
	@mkdir -p $(@D)
	$(COMPILE) $(MODULE_CFLAGS) -c -o $@ $(SRCTOP)/sys/dev/null/null.c

$(KOBJ)/modules/null/null.ko: $(KOBJ)/modules/null/null.o
	$(COMPILE) -nostdlib -r $(LDFLAGS) -o $@ $(KOBJ)/modules/null/null.o

$(KOBJ)/modules/nullfs/null_vfsops.o: $(SRCTOP)/sys/fs/nullfs/null_vfsops.c $(SYS_HEADERS)
	@mkdir -p $(@D)
	$(COMPILE) $(MODULE_CFLAGS) -c -o $@ $(SRCTOP)/sys/fs/nullfs/null_vfsops.c

$(KOBJ)/modules/nullfs/nullfs.ko: $(KOBJ)/modules/nullfs/null_vfsops.o
	$(COMPILE) -nostdlib -r $(LDFLAGS) -o $@ $(KOBJ)/modules/nullfs/null_vfsops.o

# ---- installkernel

_installkernel:
	$(INSTALL_DIR) $(DESTDIR)/boot $(DESTDIR)/boot/kernel
	$(INSTALL_PROGRAM) $(KOBJ)/kernel $(DESTDIR)/boot/kernel/kernel
	$(INSTALL_PROGRAM) $(KOBJ)/modules/null/null.ko $(DESTDIR)/boot/kernel/null.ko
	$(INSTALL_PROGRAM) $(KOBJ)/modules/nullfs/nullfs.ko $(DESTDIR)/boot/kernel/nullfs.ko
