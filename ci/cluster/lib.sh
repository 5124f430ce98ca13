# shellcheck shell=bash
# ci/cluster/lib.sh — helpers shared by ci/cluster/{slurm,sge,sshd}.sh.  Sourced by
# ci/cluster-up.sh; not meant to be run on its own.
#
# Conventions:
#   * daemons are identified ONLY by PID files whose /proc/PID/comm matches the daemon's
#     name (PID files can outlive their process: /run is not a tmpfs on every machine);
#   * a daemon this tooling started is recorded in $STATE_DIR/<service>.started, and
#     `down` stops only those;
#   * every wait has a timeout, every client command runs under `timeout`.

# shellcheck disable=SC2034  # used by the other ci/cluster/*.sh and ci/cluster-up.sh
STATE_DIR=${IMPEXEC_CLUSTER_STATE:-/run/impexec-cluster}
LOG_DIR=${IMPEXEC_CLUSTER_LOGS:-/var/log/impexec-cluster}
READY_FILE=$STATE_DIR/ready
CLEAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD_TIMEOUT=${CLUSTER_CMD_TIMEOUT:-20}   # seconds for one client command (sinfo, qconf, ...)
WAIT=${CLUSTER_WAIT:-60}                 # seconds for one readiness wait

SVC=${SVC:-cluster}
log() { printf '[cluster-up %s %(%H:%M:%S)T] %s\n' "$SVC" -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# t CMD...: run a client command with the per-command timeout (SIGKILL 5 s later)
t() { timeout -k 5 "$CMD_TIMEOUT" "$@"; }

# pid_of PIDFILE COMM -> prints the PID if that process is alive, is not a zombie, and is COMM.
# (PID 1 on the CI VM reaps orphans late, so `kill -0` succeeds on a dead daemon for a while.)
pid_of() {
    local f=$1 comm=$2 p st
    [ -s "$f" ] || return 1
    p=$(tr -dc '0-9' 2>/dev/null <"$f") || return 1
    [ -n "$p" ] && [ -r "/proc/$p/comm" ] || return 1
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$comm" ] || return 1
    # field 3 of /proc/PID/stat is the state; the comm field (2) may contain spaces, so
    # take what follows the last ')'
    st=$(sed -n 's/.*) \(.\).*/\1/p' "/proc/$p/stat" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ] || return 1
    echo "$p"
}

# started-by-us bookkeeping: one daemon name per line in $STATE_DIR/<service>.started
mark()    { mkdir -p "$STATE_DIR"; grep -qx "$2" "$STATE_DIR/$1.started" 2>/dev/null || echo "$2" >>"$STATE_DIR/$1.started"; }
marked()  { grep -qx "$2" "$STATE_DIR/$1.started" 2>/dev/null; }
unmark()  { if [ -f "$STATE_DIR/$1.started" ]; then sed -i "/^$2\$/d" "$STATE_DIR/$1.started"; fi; return 0; }

# stop_pid SERVICE NAME PIDFILE COMM [GRACE_SECONDS]: SIGTERM, wait, then SIGKILL
stop_pid() {
    local svc=$1 name=$2 f=$3 comm=$4 grace=${5:-15} p i
    p=$(pid_of "$f" "$comm") || { unmark "$svc" "$name"; return 0; }
    log "stopping $name (pid $p)"
    kill -TERM "$p" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do pid_of "$f" "$comm" >/dev/null || break; sleep 0.1; done
    if pid_of "$f" "$comm" >/dev/null; then
        log "$name did not stop within ${grace} s: SIGKILL $p"
        kill -KILL "$p" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do pid_of "$f" "$comm" >/dev/null || break; sleep 0.1; done
    fi
    unmark "$svc" "$name"
}

# _try CMD...: a shell function runs as is (its client commands use `t`), a program under `timeout`
_try() { if declare -F "$1" >/dev/null; then "$@"; else timeout -k 2 "$CMD_TIMEOUT" "$@"; fi; }

# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.2 s until it succeeds
wait_for() {
    local secs=$1 what=$2 end; shift 2
    end=$((SECONDS + secs))
    until _try "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || { log "timeout (${secs} s) waiting for $what"; return 1; }
        sleep 0.2
    done
}

# write_if_changed FILE MODE < content: returns 0 if the file was (re)written, 1 if unchanged
write_if_changed() {
    local f=$1 mode=$2 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$f" ] && cmp -s "$tmp" "$f"; then rm -f "$tmp"; return 1; fi
    mkdir -p "$(dirname "$f")"
    install -m "$mode" -o root -g root "$tmp" "$f"
    rm -f "$tmp"
    return 0
}

# start a daemon detached from our stdio, with a clean environment: a daemon that keeps
# the caller's stdout open would hang `cluster-up.sh | tee log` forever.
# spawn LOGFILE CMD...
spawn() {
    local out=$1; shift
    mkdir -p "$(dirname "$out")"
    # 9>&-: not the lock of cluster-up.sh (a daemon holding it would block every later run)
    env -i PATH="$CLEAN_PATH" LANG=C.UTF-8 HOME=/root "$@" </dev/null >>"$out" 2>&1 9>&-
}

pkg_installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }

# apt_install PKG...: one apt-get run for everything that is missing.  No systemd here, so
# make sure package postinst scripts cannot start daemons (policy-rc.d, exit 101).
apt_install() {
    [ $# -gt 0 ] || return 0
    local created_policy=0 rc=0 fresh
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# temporary, from impexec ci/cluster-up.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local apt=(timeout -k 10 "${APT_TIMEOUT:-600}" apt-get -q -o DPkg::Lock::Timeout=120
               -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    # refresh the package lists first unless they are recent: a CI image's lists are
    # usually stale, and the mirror no longer has the .debs they name
    fresh=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -"${APT_LISTS_MAX_AGE_MIN:-360}" 2>/dev/null | head -1)
    if [ -z "$fresh" ]; then
        log "apt-get update"
        "${apt[@]}" update >&2 || log "apt-get update reported errors (continuing)"
    fi
    log "apt-get install $*"
    if ! "${apt[@]}" install -y --no-install-recommends "$@" >&2; then
        log "apt-get install failed: apt-get update and retry"
        "${apt[@]}" update >&2 || true
        "${apt[@]}" install -y --no-install-recommends "$@" >&2 || rc=$?
    fi
    if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    return "$rc"
}

# port_in_use PORT: something listens on TCP port PORT
port_in_use() {
    if command -v ss >/dev/null; then ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
    else (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; fi
}
