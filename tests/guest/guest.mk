# Test guests (tests/guest/README.md).  Included by the top-level Makefile;
# paths are relative to the repository root.  Needs GNU make >= 4.3 (&:).

GUEST_TINY_ELF      := build/guest/tiny/tiny.elf
GUEST_LINUX_VMLINUX := build/guest/linux/vmlinux
GUEST_LINUX_INITRD  := build/guest/linux/initramfs.img

GUEST_TINY_INPUTS  := scripts/build-guest-tiny.sh scripts/common.sh \
                      tests/guest/tiny/start.S tests/guest/tiny/tiny.c tests/guest/tiny/tiny.ld
GUEST_LINUX_INPUTS := scripts/build-guest-linux.sh scripts/common.sh \
                      tests/guest/linux/init tests/guest/agent/agent.c

$(GUEST_TINY_ELF): $(GUEST_TINY_INPUTS)
	scripts/build-guest-tiny.sh

# One run makes (or confirms and touches) both files.  The first run
# downloads the kernel and busybox .debs into $(VMFORK_CACHE)/guest-kernel.
$(GUEST_LINUX_VMLINUX) $(GUEST_LINUX_INITRD) &: $(GUEST_LINUX_INPUTS)
	scripts/build-guest-linux.sh

.PHONY: guests guest-tiny guest-linux
guests: guest-tiny guest-linux guest-debian
guest-tiny: $(GUEST_TINY_ELF)
guest-linux: $(GUEST_LINUX_VMLINUX) $(GUEST_LINUX_INITRD)

# The Debian guest (tests/guest/debian/README.md): bookworm with systemd,
# qemu-guest-agent, sshd and vmfork-guest in a qcow2 image.  Needs root
# (without it the script says so, builds nothing, and test-debian skips)
# and build/qemu/qemu-img; built once into $(VMFORK_CACHE)/guest-debian,
# then only copied.  build/guest/debian/key stands for all its files.
# check-guest-debian boots it (about 15 s).
GUEST_DEBIAN_KEY    := build/guest/debian/key
GUEST_DEBIAN_INPUTS := scripts/build-guest-debian.sh scripts/common.sh \
                       guest/vmfork-guest/vmfork-guest.c \
                       guest/vmfork-guest/vmfork-guest.service \
                       guest/vmfork-guest/README.md \
                       $(shell find tests/guest/debian/rootfs -type f)

$(GUEST_DEBIAN_KEY): $(GUEST_DEBIAN_INPUTS)
	scripts/build-guest-debian.sh

.PHONY: guest-debian check-guest-debian
guest-debian: $(GUEST_DEBIAN_KEY)
check-guest-debian: guest-debian
	scripts/boot-guest-debian.sh
