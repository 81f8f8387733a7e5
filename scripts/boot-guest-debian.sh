#!/usr/bin/env bash
# Smoke test of the Debian test guest (scripts/build-guest-debian.sh): boot
# build/guest/debian under TCG on a throwaway qcow2 overlay (the built image
# is only read), then check that
#   (a) qemu-guest-agent answers guest-ping on its virtio-serial channel,
#   (b) root logs in over SSH with the test key (user networking, a hostfwd
#       to the guest's port 22) and `systemctl is-system-running --wait`
#       says running (degraded: the failed units are printed),
#   (c) the NIC got its address by DHCP (10.0.2.15, from QEMU's slirp);
# then shut it down through the agent (guest-shutdown) and wait for QEMU to
# exit.  Prints the times from QEMU's start.  Leaves no process or file.
#
# usage: boot-guest-debian.sh [--kernel vmlinux|vmlinuz] [--mem MIB] [--smp N]
#                             [--cpu MODEL] [--timeout S] [--keep]
#   --kernel vmlinux (default: the PVH ELF, no decompression in the guest)
#   or vmlinuz (the bzImage as Debian ships it, 2-3 s slower under TCG),
#   --mem 512 (default), --smp 1 (default), --cpu (QEMU's default model
#   unless given), --timeout for each wait (default 300 s),
#   --keep: keep the temporary directory (overlay, serial log) and print it.
# Exit status: 0 all checks passed, 1 a check failed, 2 usage error.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"

usage() { echo "usage: $0 [--kernel vmlinux|vmlinuz] [--mem MIB] [--smp N] [--cpu MODEL] [--timeout S] [--keep]"; }
kernel=vmlinux mem=512 smp=1 cpu='' timeout=300 keep=0
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel) kernel=${2:?}; shift; case "$kernel" in vmlinux|vmlinuz) ;; *) usage >&2; exit 2 ;; esac ;;
        --mem) mem=${2:?}; shift ;;
        --smp) smp=${2:?}; shift ;;
        --cpu) cpu=${2:?}; shift ;;
        --timeout) timeout=${2:?}; shift ;;
        --keep) keep=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
    shift
done

img="$VMFORK_BUILD/guest/debian"
qemu="$VMFORK_BUILD/qemu/qemu-system-x86_64"
qemu_img="$VMFORK_BUILD/qemu/qemu-img"
qga="$VMFORK_TOP/tests/guest/debian/qga.py"
python=$(command -v /usr/bin/python3 || command -v python3)
for f in "$img/debian.qcow2" "$img/$kernel" "$img/initrd.img" "$img/id_ed25519" "$img/cmdline"; do
    [ -f "$f" ] || { echo "boot-guest-debian: $f missing: run scripts/build-guest-debian.sh" >&2; exit 1; }
done
[ -x "$qemu" ] || { echo "boot-guest-debian: $qemu missing: build QEMU first" >&2; exit 1; }
command -v ssh >/dev/null || { echo "boot-guest-debian: needs ssh (openssh-client)" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vmfork-debian.XXXXXX")
qpid='' apid='' cpid=''
cleanup() {
    local rc=$?
    for p in $cpid $apid $qpid; do
        if kill -0 "$p" 2>/dev/null; then kill "$p" 2>/dev/null || true; fi
        wait "$p" 2>/dev/null || true
    done
    if [ $keep = 1 ]; then log "kept $tmp"; else rm -rf "$tmp"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
    echo "boot-guest-debian: FAIL: $*" >&2
    if [ -s "$tmp/serial.log" ]; then
        echo "--- last lines of the serial console ---" >&2
        tail -n 25 "$tmp/serial.log" | tr -d '\r' >&2
    fi
    [ -s "$tmp/qemu.log" ] && { echo "--- QEMU ---" >&2; cat "$tmp/qemu.log" >&2; }
    exit 1
}
# bg_wait CMD...: run CMD (stdin included) and wait for it in a way that a
# signal interrupts at once (bash runs traps only between commands).
bg_wait() {
    local rc=0
    "$@" <&0 &
    cpid=$!
    wait "$cpid" || rc=$?
    cpid=
    return $rc
}
now() { date +%s.%N; }
since() { awk -v a="$t0" -v b="$1" 'BEGIN { printf "%.1f s", b - a }'; }

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$qemu_img" create -q -f qcow2 -F qcow2 -b "$img/debian.qcow2" "$tmp/overlay.qcow2"
ssh_cmd=(ssh -q -i "$img/id_ed25519" -p "$port" -o BatchMode=yes -o ConnectTimeout=5
         -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
         root@127.0.0.1)
# shellcheck disable=SC2054  # commas inside QEMU option values
qemu_args=(-accel tcg -M pc ${cpu:+-cpu "$cpu"} -m "$mem" -smp "$smp" -nodefaults -display none
    -kernel "$img/$kernel" -initrd "$img/initrd.img" -append "$(cat "$img/cmdline")"
    -drive "file=$tmp/overlay.qcow2,format=qcow2,if=none,id=disk0"
    -device virtio-blk-pci,drive=disk0
    -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=net0,romfile=
    -device virtio-serial-pci
    -chardev "socket,id=qga0,path=$tmp/qga.sock,server=on,wait=off"
    -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0
    -serial "file:$tmp/serial.log"
    -qmp "unix:$tmp/qmp.sock,server=on,wait=off")
log "accel: tcg, guest: Debian ($(cat "$img/key" 2>/dev/null || echo '?'), $kernel), ${mem} MiB," \
    "$smp vCPU${cpu:+, -cpu $cpu}, ssh on 127.0.0.1:$port"

t0=$(now)
"$qemu" "${qemu_args[@]}" >"$tmp/qemu.log" 2>&1 &
qpid=$!
# (a) the agent, in the background while (b) polls SSH
( "$python" "$qga" --timeout "$timeout" "$tmp/qga.sock" guest-ping >"$tmp/agent.out" 2>&1 &&
  now > "$tmp/agent.t" ) &
apid=$!

# (b) SSH: first sshd's banner through the hostfwd (slirp accepts the
# connection at once, so a probe that gets no banner in 1 s retries), then
# a login with the test key.
bg_wait "$python" - "$port" "$timeout" "$qpid" <<'EOF' || fail "no SSH banner after $timeout s, or QEMU exited"
import os, socket, sys, time
port, deadline, qpid = int(sys.argv[1]), time.monotonic() + float(sys.argv[2]), int(sys.argv[3])
while time.monotonic() < deadline:
    os.kill(qpid, 0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(1)
            if s.recv(64).startswith(b"SSH-"):
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(1)
EOF
t_banner=$(now)
"${ssh_cmd[@]}" true || fail "ssh login with $img/id_ed25519 failed"
t_ssh=$(now)
log "sshd banner: $(since "$t_banner"), ssh login: $(since "$t_ssh") after QEMU's start"
bg_wait timeout "$timeout" "${ssh_cmd[@]}" systemctl is-system-running --wait >"$tmp/state" || true
state=$(cat "$tmp/state")
t_run=$(now)
log "systemctl is-system-running: $state ($(since "$t_run"))"
case "$state" in
    running) ;;
    degraded)
        echo "boot-guest-debian: WARNING: degraded; failed units:" >&2
        "${ssh_cmd[@]}" systemctl --failed --no-legend --plain >&2 || true ;;
    *) fail "system state '$state'" ;;
esac

wait "$apid" || fail "guest agent: $(cat "$tmp/agent.out")"
apid=
[ "$(cat "$tmp/agent.out")" = "{}" ] || fail "guest-ping returned $(cat "$tmp/agent.out")"
log "guest agent: guest-ping answered $(since "$(cat "$tmp/agent.t")") after QEMU's start"

# (c) DHCP, and what the guest says about itself
info=$("${ssh_cmd[@]}" 'ip -4 -o addr show scope global; hostname; uname -r;
        echo "machine-id $(cat /etc/machine-id)"; free -m | sed -n 2p;
        systemd-analyze | head -1;
        networkctl list --no-legend --no-pager | grep -v loopback') ||
    fail "ssh: cannot read the guest's state"
sed 's/^/    /' <<<"$info" >&2
grep -q 'inet 10\.0\.2\.15/' <<<"$info" || fail "no DHCP address 10.0.2.15"
grep -qw dynamic <<<"$("${ssh_cmd[@]}" ip -4 addr show scope global)" ||
    fail "10.0.2.15 is not a dynamic (DHCP) address"
log "DHCP: 10.0.2.15"

# Clean shutdown through the agent
t_down=$(now)
"$python" "$qga" --timeout 30 --no-reply "$tmp/qga.sock" guest-shutdown '{"mode": "powerdown"}' ||
    fail "guest-shutdown failed"
for _ in $(seq 1 600); do
    kill -0 "$qpid" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$qpid" 2>/dev/null && fail "QEMU still running 60 s after guest-shutdown"
wait "$qpid" || fail "QEMU exited with status $?"
qpid=
log "powered off in $(awk -v a="$t_down" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }')"
echo "debian guest: agent $(since "$(cat "$tmp/agent.t")"), sshd $(since "$t_banner")," \
     "ssh login $(since "$t_ssh"), system $state $(since "$t_run") after QEMU's start" \
     "(tcg, $kernel, ${mem} MiB, $smp vCPU${cpu:+, $cpu})"
