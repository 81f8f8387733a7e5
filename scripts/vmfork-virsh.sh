#!/usr/bin/env bash
# vmfork-virsh.sh: fork a libvirt domain and manage its children with virsh
#
# Copyright (c) 2026 vmfork developers
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Talks to the VM only through `virsh qemu-monitor-command` and
# `virsh qemu-monitor-event`, so it works wherever virsh reaches the domain.
# `kill` also needs to run on the host of the VM (it signals the child
# process).  The JSON replies are parsed in bash: no jq or python needed.
# See docs/libvirt.md.

set -euo pipefail

PROG=${0##*/}
VIRSH=${VIRSH:-virsh}
VIRSH_OPTS=()
EVENTS_RE='VMFORK_CHILD_(READY|EXITED)'

# Exit status, as for the other vmfork tools
EXIT_OK=0
EXIT_QMP=1
EXIT_USAGE=2
EXIT_IO=3

usage() {
    cat <<EOF
Usage: $PROG [-c URI] COMMAND [ARGUMENTS...]

Fork the VM of a libvirt domain (vmfork) and manage its children, with virsh
only.  The domain must run the vmfork-patched QEMU.

Commands:
  fork DOMAIN [--count N] [--monitor TEMPLATE] [--serial TEMPLATE]
              [--no-start] [--paused-parent] [--overlay-dir DIR]
              [--arg NAME=JSON]... [--json]
        fork the VM; prints "pid P clone-id C monitor PATH" per child.
        --arg adds any other vmfork argument, its value given as JSON
        (e.g. --arg 'count=2').
        TEMPLATE: %i is the child's index, %p its pid, %% a '%'.
        Without --monitor a child's QMP socket is libvirt's monitor socket
        path + ".fork-PID", inside libvirt's per-domain directory (removed
        when the domain stops): pass --monitor with a directory of yours.
  ls DOMAIN [--json]
        this VM's clone-id, generation and parent-pid, and its children
  kill DOMAIN PID|--all [--signal SIG] [--timeout SEC]
        stop a running child (or every running child): checks that
        query-vmfork lists PID as running and that the process is this
        domain's QEMU, sends SIG (default TERM), then waits (default 10 s)
        until query-vmfork reports it exited: "pid P exited with status S".
        Must run on the VM's host.  Use it before 'virsh destroy': libvirt
        stops the parent QEMU only, children would live on.
  events [DOMAIN] [--timeout SEC] [--once] [--timestamp]
        print VMFORK_CHILD_READY and VMFORK_CHILD_EXITED events as they
        come (virsh qemu-monitor-event), until interrupted or SEC seconds

Options:
  -c, --connect URI   libvirt connection URI (default: virsh's, e.g.
                      \$LIBVIRT_DEFAULT_URI)
  -h, --help          this help; '$PROG COMMAND --help' works too

Environment: VIRSH (the virsh binary, default 'virsh').

Children are not libvirt domains: they run in the parent's cgroup, under
libvirt's view of one domain, and are found through query-vmfork.  Every
vmfork and query through qemu-monitor-command marks the domain as tainted
(custom-monitor).

Exit status: 0 success, 1 QMP error (class and description on stderr),
2 usage error, 3 virsh, connection or timeout error.
EOF
}

msg() { printf '%s: %s\n' "$PROG" "$*" >&2; }
fail() { local code=$1; shift; msg "$@"; exit "$code"; }
usage_error() {
    msg "$@"
    echo "Try '$PROG --help'." >&2
    exit $EXIT_USAGE
}

# --- JSON, just enough for QMP replies ---------------------------------

# Decode the body of a JSON string (the text between the quotes)
json_unescape() {
    local s=$1 out='' c
    while [[ $s == *\\* ]]; do
        out+=${s%%\\*}
        s=${s#*\\}
        c=${s:0:1}
        s=${s:1}
        case $c in
            n) out+=$'\n' ;;
            t) out+=$'\t' ;;
            r) out+=$'\r' ;;
            b) out+=$'\b' ;;
            f) out+=$'\f' ;;
            u) out+=$(printf '%b' "\\u${s:0:4}"); s=${s:4} ;;
            *) out+=$c ;;                 # \" \\ \/
        esac
    done
    printf '%s' "$out$s"
}

# Encode a string as a JSON string (with the quotes)
json_quote() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/\\t}
    printf '"%s"' "$s"
}

# The member KEY of the flat JSON object $1: a number, true/false, or a
# string (decoded).  Fails when it is not there.
json_get() {
    local obj=$1 key=$2
    local re="\"$key\":(-?[0-9]+|true|false|\"(([^\"\\\\]|\\\\.)*)\")"
    [[ $obj =~ $re ]] || return 1
    if [[ ${BASH_REMATCH[1]:0:1} == '"' ]]; then
        json_unescape "${BASH_REMATCH[2]}"
    else
        printf '%s' "${BASH_REMATCH[1]}"
    fi
}

# Split $1 at its "children" array: CHILDREN gets the elements (objects),
# TOP the text around the array (for the members of the enclosing object).
json_children() {
    local s=$1 rest i c depth=0 in_str=0 esc=0 start=0
    CHILDREN=()
    TOP=$s
    rest=${s#*\"children\":\[}
    [[ $rest != "$s" ]] || return 0
    for ((i = 0; i < ${#rest}; i++)); do
        c=${rest:i:1}
        if ((in_str)); then
            if ((esc)); then
                esc=0
            elif [[ $c == "\\" ]]; then
                esc=1
            elif [[ $c == '"' ]]; then
                in_str=0
            fi
            continue
        fi
        case $c in
            '"') in_str=1 ;;
            '{') ((depth == 0)) && start=$i; depth=$((depth + 1)) ;;
            '}') depth=$((depth - 1))
                 ((depth == 0)) && CHILDREN+=("${rest:start:i-start+1}") ;;
            ']') if ((depth == 0)); then
                     TOP="${s%%\"children\":\[*}${rest:i+1}"
                     return 0
                 fi ;;
        esac
    done
}

# --- virsh ---------------------------------------------------------------

virsh_() { "$VIRSH" "${VIRSH_OPTS[@]}" "$@"; }

# Run a QMP command on DOMAIN; REPLY gets the reply ({"return": ...}).
# A QMP error exits with 1, a virsh failure with 3.
qmp() {
    local dom=$1 cmd=$2
    # A QMP error is not a virsh error: virsh prints the error reply and
    # exits 0 (without --return-value, which would hide the description)
    if ! REPLY=$(virsh_ qemu-monitor-command --domain "$dom" --cmd "$cmd"); then
        fail $EXIT_IO "virsh qemu-monitor-command on domain '$dom' failed"
    fi
    if [[ $REPLY =~ \"error\":\{ ]]; then
        local obj=${REPLY#*\"error\":}
        fail $EXIT_QMP "$(json_get "$obj" class || echo Error):" \
             "$(json_get "$obj" desc || echo "$REPLY")"
    fi
    if [[ ! $REPLY =~ \"return\": ]]; then
        fail $EXIT_IO "unexpected reply from virsh: $REPLY"
    fi
}

# The reply's return value, as text: REPLY is {"return":VALUE,"id":"..."}
# or {"id":"...","return":VALUE} (libvirt's ids have no quotes inside)
reply_return() {
    local r=${REPLY#*\"return\":}
    if [[ $r =~ ,\"id\":\"[^\"]*\"[[:space:]]*\}[[:space:]]*$ ]]; then
        r=${r%"${BASH_REMATCH[0]}"}
    else
        r=${r%\}*}
    fi
    printf '%s\n' "$r"
}

now_ns() { date +%s%N; }

# Is the process PID a QEMU started by libvirt for the domain NAME
# (libvirt passes "-name guest=NAME,..." with commas doubled)?
pid_is_domain_qemu() {
    local pid=$1 name=$2 arg prev='' want
    want="guest=${name//,/,,},"
    [[ -r /proc/$pid/cmdline ]] || return 1
    while IFS= read -r -d '' arg; do
        if [[ $prev == -name && ( $arg == "$want"* ||
              $arg == "guest=${name//,/,,}" ) ]]; then
            return 0
        fi
        prev=$arg
    done < "/proc/$pid/cmdline"
    return 1
}

# --- commands ------------------------------------------------------------

cmd_fork() {
    local dom='' count='' monitor='' serial='' start='' parent='' json=0
    local overlay='' args='' extra='' t0 t1 c
    while (($#)); do
        case $1 in
            -h|--help) usage; exit $EXIT_OK ;;
            --count) (($# >= 2)) || usage_error "--count needs a number"
                     count=$2; shift ;;
            --count=*) count=${1#*=} ;;
            --monitor) (($# >= 2)) || usage_error "--monitor needs a template"
                       monitor=$2; shift ;;
            --monitor=*) monitor=${1#*=} ;;
            --serial) (($# >= 2)) || usage_error "--serial needs a template"
                      serial=$2; shift ;;
            --serial=*) serial=${1#*=} ;;
            --overlay-dir) (($# >= 2)) || usage_error "--overlay-dir needs a directory"
                           overlay=$2; shift ;;
            --overlay-dir=*) overlay=${1#*=} ;;
            --arg) (($# >= 2)) || usage_error "--arg needs NAME=JSON"
                   [[ $2 =~ ^[a-z][a-z0-9-]*=. ]] ||
                       usage_error "fork: --arg '$2' is not NAME=JSON"
                   extra+=",\"${2%%=*}\":${2#*=}"; shift ;;
            --no-start) start=false ;;
            --paused-parent) parent=paused ;;
            --json) json=1 ;;
            -*) usage_error "fork: unknown option '$1'" ;;
            *) [[ -z $dom ]] || usage_error "fork: one DOMAIN only"
               dom=$1 ;;
        esac
        shift
    done
    [[ -n $dom ]] || usage_error "fork: DOMAIN missing"
    if [[ -n $count ]]; then
        [[ $count =~ ^[0-9]+$ ]] || usage_error "fork: '$count' is not a count"
        args+=",\"count\":$((10#$count))"
    fi
    [[ -z $monitor ]] || args+=",\"monitor\":$(json_quote "$monitor")"
    [[ -z $serial ]] || args+=",\"serial\":$(json_quote "$serial")"
    [[ -z $start ]] || args+=",\"start\":$start"
    [[ -z $parent ]] || args+=",\"parent\":\"$parent\""
    [[ -z $overlay ]] || args+=",\"overlay-dir\":$(json_quote "$overlay")"
    args+=$extra
    args="{${args#,}}"

    t0=$(now_ns)
    qmp "$dom" "{\"execute\":\"vmfork\",\"arguments\":$args}"
    t1=$(now_ns)
    if ((json)); then
        reply_return
        return $EXIT_OK
    fi
    json_children "$REPLY"
    for c in "${CHILDREN[@]}"; do
        printf 'pid %s clone-id %s monitor %s\n' "$(json_get "$c" pid)" \
               "$(json_get "$c" clone-id)" "$(json_get "$c" monitor)"
    done
    local w
    w=$(json_get "$TOP" warning) && msg "warning: $w"
    printf 'forked %d %s in %d.%03d ms\n' ${#CHILDREN[@]} \
           "$( ((${#CHILDREN[@]} == 1)) && echo child || echo children)" \
           $(((t1 - t0) / 1000000)) $((((t1 - t0) / 1000) % 1000))
}

cmd_ls() {
    local dom='' json=0 c st
    while (($#)); do
        case $1 in
            -h|--help) usage; exit $EXIT_OK ;;
            --json) json=1 ;;
            -*) usage_error "ls: unknown option '$1'" ;;
            *) [[ -z $dom ]] || usage_error "ls: one DOMAIN only"
               dom=$1 ;;
        esac
        shift
    done
    [[ -n $dom ]] || usage_error "ls: DOMAIN missing"
    qmp "$dom" '{"execute":"query-vmfork"}'
    if ((json)); then
        reply_return
        return $EXIT_OK
    fi
    json_children "$REPLY"
    printf 'clone-id %s generation %s parent-pid %s\n' \
           "$(json_get "$TOP" clone-id)" "$(json_get "$TOP" generation)" \
           "$(json_get "$TOP" parent-pid)"
    printf '%-8s %-8s %-8s %-5s %s\n' PID CLONE-ID STATE EXIT MONITOR
    for c in "${CHILDREN[@]}"; do
        st=$(json_get "$c" exit-status) || st=-
        printf '%-8s %-8s %-8s %-5s %s\n' "$(json_get "$c" pid)" \
               "$(json_get "$c" clone-id)" "$(json_get "$c" state)" "$st" \
               "$(json_get "$c" monitor)"
    done
}

# Child PID in the last query-vmfork reply: STATE gets its state ("" when
# it is not listed), STATUS its exit status ("" while it runs)
child_state() {
    local pid=$1 c
    STATE=''
    STATUS=''
    json_children "$REPLY"
    for c in "${CHILDREN[@]}"; do
        if [[ $(json_get "$c" pid) == "$pid" ]]; then
            STATE=$(json_get "$c" state) || STATE=''
            STATUS=$(json_get "$c" exit-status) || STATUS=''
            return 0
        fi
    done
}

cmd_kill() {
    local dom='' pid='' all=0 sig=TERM timeout=10 name c
    local pids=()
    while (($#)); do
        case $1 in
            -h|--help) usage; exit $EXIT_OK ;;
            --all) all=1 ;;
            --signal|-s) (($# >= 2)) || usage_error "--signal needs a signal"
                         sig=$2; shift ;;
            --signal=*) sig=${1#*=} ;;
            --timeout) (($# >= 2)) || usage_error "--timeout needs seconds"
                       timeout=$2; shift ;;
            --timeout=*) timeout=${1#*=} ;;
            -*) usage_error "kill: unknown option '$1'" ;;
            *) if [[ -z $dom ]]; then dom=$1
               elif [[ -z $pid ]]; then pid=$1
               else usage_error "kill: too many arguments"; fi ;;
        esac
        shift
    done
    [[ -n $dom ]] || usage_error "kill: DOMAIN missing"
    if ((all)); then
        [[ -z $pid ]] || usage_error "kill: PID or --all, not both"
    else
        [[ $pid =~ ^[1-9][0-9]*$ ]] || usage_error "kill: PID missing or not a pid"
    fi
    [[ $timeout =~ ^[0-9]+$ ]] || usage_error "kill: '$timeout' is not seconds"
    sig=${sig#SIG}
    sig=${sig#sig}
    kill -l "$sig" >/dev/null 2>&1 || usage_error "kill: '$sig' is not a signal"

    # The name (DOMAIN may be a name, an id or a UUID)
    name=$(virsh_ dominfo "$dom" | sed -n 's/^Name: *//p') || name=''
    [[ -n $name ]] || fail $EXIT_IO "no domain '$dom'"
    qmp "$dom" '{"execute":"query-vmfork"}'
    if ((all)); then
        json_children "$REPLY"
        for c in "${CHILDREN[@]}"; do
            [[ $(json_get "$c" state) == running ]] && pids+=("$(json_get "$c" pid)")
        done
        ((${#pids[@]})) || { echo "no running child"; return $EXIT_OK; }
    else
        child_state "$pid"
        case $STATE in
            running) pids=("$pid") ;;
            exited) fail $EXIT_QMP "pid $pid has already exited (status $STATUS)" ;;
            *) fail $EXIT_QMP "pid $pid is not a child of domain '$name' (query-vmfork does not list it)" ;;
        esac
    fi
    for pid in "${pids[@]}"; do
        pid_is_domain_qemu "$pid" "$name" ||
            fail $EXIT_IO "pid $pid is not a QEMU of domain '$name' on this host (kill must run on the VM's host)"
        kill -s "$sig" "$pid" || fail $EXIT_IO "kill -s $sig $pid failed"
    done
    local deadline=$((SECONDS + timeout)) left
    while :; do
        qmp "$dom" '{"execute":"query-vmfork"}'
        left=()
        for pid in "${pids[@]}"; do
            child_state "$pid"
            if [[ $STATE == exited ]]; then
                echo "pid $pid exited with status $STATUS"
            else
                left+=("$pid")
            fi
        done
        pids=("${left[@]+"${left[@]}"}")
        ((${#pids[@]})) || return $EXIT_OK
        ((SECONDS < deadline)) ||
            fail $EXIT_IO "timed out after ${timeout} s: still running: ${pids[*]}"
        sleep 0.1
    done
}

cmd_events() {
    local dom='' loop=1 opts=()
    while (($#)); do
        case $1 in
            -h|--help) usage; exit $EXIT_OK ;;
            --timeout) (($# >= 2)) || usage_error "--timeout needs seconds"
                       [[ $2 =~ ^[0-9]+$ ]] || usage_error "events: '$2' is not seconds"
                       opts+=(--timeout "$2"); shift ;;
            --once) loop=0 ;;
            --timestamp) opts+=(--timestamp) ;;
            -*) usage_error "events: unknown option '$1'" ;;
            *) [[ -z $dom ]] || usage_error "events: one DOMAIN only"
               dom=$1 ;;
        esac
        shift
    done
    ((loop)) && opts+=(--loop)
    [[ -z $dom ]] || opts+=(--domain "$dom")
    # exec: a signal to this script (^C, kill) reaches virsh itself
    exec "$VIRSH" "${VIRSH_OPTS[@]}" qemu-monitor-event \
        --event "$EVENTS_RE" --regex "${opts[@]}"
}

# --- main ----------------------------------------------------------------

main() {
    while (($#)); do
        case $1 in
            -h|--help) usage; exit $EXIT_OK ;;
            -c|--connect) (($# >= 2)) || usage_error "$1 needs a URI"
                          VIRSH_OPTS=(-c "$2"); shift ;;
            --connect=*) VIRSH_OPTS=(-c "${1#*=}") ;;
            -*) usage_error "unknown option '$1'" ;;
            *) break ;;
        esac
        shift
    done
    (($#)) || usage_error "COMMAND missing"
    local cmd=$1
    shift
    command -v "$VIRSH" >/dev/null 2>&1 ||
        [[ " $* " == *" --help "* || " $* " == *" -h "* ]] ||
        fail $EXIT_IO "'$VIRSH' not found (Debian: apt-get install libvirt-clients)"
    case $cmd in
        fork) cmd_fork "$@" ;;
        ls) cmd_ls "$@" ;;
        kill) cmd_kill "$@" ;;
        events) cmd_events "$@" ;;
        help) usage ;;
        *) usage_error "unknown command '$cmd'" ;;
    esac
}

main "$@"
