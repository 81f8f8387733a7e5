#!/usr/bin/env bash
# The demo of `make demo`: boots the bundled Linux guest in the patched
# QEMU (TCG), forks it, shows that parent and child run independently and
# prints the clone latencies.  Expects `make` to have built everything.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
export VMFORK_QEMU="$top/build/qemu/qemu-system-x86_64"
export VMFORK_LINUX_KERNEL="$top/build/guest/linux/vmlinux"
export VMFORK_LINUX_INITRD="$top/build/guest/linux/initramfs.img"
exec "$top/build/meson/tests/functional/vmfork-demo"
