#!/usr/bin/env bash
# The demo of `make demo`: boots a guest in the patched QEMU (TCG), forks
# it and shows the clones running on their own.  With the Debian guest
# (build/guest/debian, which `make` builds where it can: root and
# mmdebstrap) three clones each customise themselves and answer ssh on
# their own port; without it, the Linux test guest shows memory
# copy-on-write and a paused template.  Expects `make` to have built
# everything.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
export VMFORK_QEMU="$top/build/qemu/qemu-system-x86_64"
export VMFORK_QEMU_IMG="$top/build/qemu/qemu-img"
export VMFORK_LINUX_KERNEL="$top/build/guest/linux/vmlinux"
export VMFORK_LINUX_INITRD="$top/build/guest/linux/initramfs.img"
export VMFORK_DEBIAN_DIR="$top/build/guest/debian"
demo="$top/build/meson/tests/functional/vmfork-demo"
if [ -f "$VMFORK_DEBIAN_DIR/debian.qcow2" ] && command -v ssh >/dev/null; then
    exec "$demo" debian
fi
echo "demo: no Debian guest in $VMFORK_DEBIAN_DIR (or no ssh client): the Linux test guest instead" >&2
exec "$demo" linux
