#!/usr/bin/env bash
# ci/cluster-up.sh — real schedulers for impexec's cluster tests (pytest -m cluster), on THIS
# machine, all on loopback:
#   slurm  single-node Slurm: munged + slurmctld + slurmd (node "localhost", partition "debug",
#          4 CPUs by default even on 2 cores); slurmdbd + MariaDB only with SLURM_ACCOUNTING=1
#   sge    single-node Grid Engine: sge_qmaster + sge_execd (queue all.q@localhost, 4 slots)
#   ssh    a private sshd on 127.0.0.1:2222 accepting root with the key pair
#          /root/.ssh/impexec_ci_ed25519 (generated), `Host impexec-ci` in /root/.ssh/config
#
# Usage (as root; Debian 12; no systemd needed — daemons are started by hand):
#   ci/cluster-up.sh [up|down|status] [slurm|sge|ssh|all]...      (default: up all)
#
#   up      install the Debian packages that are missing (one apt-get run), configure,
#           start, and wait until each service really runs a job / accepts a login.
#           Idempotent: on a running, unchanged setup it returns at once.
#   down    delete all jobs, then stop the daemons that THIS script started (by PID file).
#   status  print which daemons run, then the readiness marker.
#
# Readiness marker, rewritten after every up/down: /run/impexec-cluster/ready, one key=value
# per line, only for services that are up, e.g.
#   slurm=1  slurm_partition=debug  slurm_cpus=4
#   sge=1    sge_queue=all.q        sge_slots=4
#   ssh=127.0.0.1:2222:/root/.ssh/impexec_ci_ed25519   ssh_alias=impexec-ci
#
# Knobs: SLURM_CPUS SLURM_ACCOUNTING SLURM_PROCTRACK SLURM_PARTITION SLURM_FRESH SLURM_PROBE
#        (ci/cluster/slurm.sh), SGE_SLOTS SGE_QUEUE SGE_PROBE (ci/cluster/sge.sh),
#        IMPEXEC_SSH_PORT IMPEXEC_SSH_KEY (ci/cluster/sshd.sh), CLUSTER_WAIT (readiness
#        timeout, 60 s), APT_LISTS_MAX_AGE_MIN (apt-get update if the lists are older, 360).
# Logs: /var/log/slurm/, /var/spool/gridengine/{qmaster,execd/localhost}/messages,
#       /var/log/impexec-cluster/.
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
umask 022

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=ci/cluster/lib.sh
. "$HERE/cluster/lib.sh"
# shellcheck source=ci/cluster/slurm.sh
. "$HERE/cluster/slurm.sh"
# shellcheck source=ci/cluster/sge.sh
. "$HERE/cluster/sge.sh"
# shellcheck source=ci/cluster/sshd.sh
. "$HERE/cluster/sshd.sh"

usage() { echo "usage: $0 [up|down|status] [slurm|sge|ssh|all]..." >&2; exit 2; }

ACTION=up
case "${1:-}" in
    up|start|down|stop|status) ACTION=$1; shift ;;
    -h|--help|help) usage ;;
esac
SERVICES=()
for a in "${@:-all}"; do
    case "$a" in
        all) SERVICES+=(slurm sge ssh) ;;
        slurm|sge|ssh) SERVICES+=("$a") ;;
        sshd) SERVICES+=(ssh) ;;
        *) usage ;;
    esac
done
# dedupe, keep order
mapfile -t SERVICES < <(printf '%s\n' "${SERVICES[@]}" | awk '!seen[$0]++')

if [ "$ACTION" != status ]; then
    [ "$(id -u)" = 0 ] || die "must run as root (try: sudo bash $0 $ACTION ${SERVICES[*]})"
    mkdir -p "$STATE_DIR" "$LOG_DIR"
fi

svc_fn() { case "$1" in ssh) echo "sshd_$2" ;; *) echo "$1_$2" ;; esac; }

# run_parallel ACTION SVC...: one background subshell per service; fails if any failed
run_parallel() {
    local action=$1 s rc=0 fn; shift
    local -A pids=()
    for s in "$@"; do
        fn=$(svc_fn "$s" "$action")
        # shellcheck disable=SC2034  # SVC: the log prefix, read by log() in lib.sh
        ( SVC=$s; "$fn" ) &
        pids[$s]=$!
    done
    FAILED=()
    for s in "$@"; do
        if ! wait "${pids[$s]}"; then FAILED+=("$s"); rc=1; fi
    done
    return "$rc"
}

# the readiness marker: the .info lines (written by a successful up) of each service
# whose daemons are alive
write_ready() {
    local tmp s failed=" ${FAILED[*]:-} "
    tmp=$(mktemp "$STATE_DIR/.ready.XXXXXX")
    for s in slurm sge ssh; do
        if [[ $failed != *" $s "* ]] && [ -s "$STATE_DIR/$s.info" ] && "$(svc_fn "$s" running)"; then
            cat "$STATE_DIR/$s.info" >>"$tmp"
        fi
    done
    chmod 644 "$tmp"
    mv -f "$tmp" "$READY_FILE"
}

do_up() {
    local t0=$SECONDS s pkgs=() rc=0
    for s in "${SERVICES[@]}"; do
        mapfile -t -O "${#pkgs[@]}" pkgs < <("$(svc_fn "$s" packages)")
    done
    if [ "${#pkgs[@]}" -gt 0 ]; then
        [[ " ${SERVICES[*]} " == *" sge "* ]] && sge_preseed
        apt_install "${pkgs[@]}" || die "package installation failed"
    fi
    run_parallel up "${SERVICES[@]}" || rc=1
    write_ready
    if [ "$rc" != 0 ]; then
        log "FAILED: ${FAILED[*]} (see the messages above)"
        return 1
    fi
    log "up in $((SECONDS - t0)) s: ${SERVICES[*]}; readiness marker $READY_FILE:"
    sed 's/^/    /' "$READY_FILE" >&2
    if [[ " ${SERVICES[*]} " == *" ssh "* ]]; then
        sshd_settings
        log "ssh: ssh ${SSH_OPTS[*]} root@127.0.0.1 python3 -c 'print(1)'   (or: ssh $SSHD_ALIAS ...)"
    fi
}

do_down() {
    local t0=$SECONDS rc=0
    run_parallel down "${SERVICES[@]}" || rc=1
    FAILED=()
    write_ready
    log "down in $((SECONDS - t0)) s: ${SERVICES[*]}"
    return "$rc"
}

do_status() {
    local s
    for s in "${SERVICES[@]}"; do
        echo "$s:"
        "$(svc_fn "$s" status)" || true
    done
    echo "readiness marker $READY_FILE:"
    if [ -s "$READY_FILE" ]; then sed 's/^/  /' "$READY_FILE"; else echo "  (nothing up)"; fi
}

# one up/down at a time: a second caller (another CI step, a developer) waits here
lock() {
    exec 9>"$STATE_DIR/lock"
    if ! flock -n 9; then
        log "another cluster-up.sh up/down is running: waiting (up to 600 s)"
        flock -w 600 9 || die "timeout waiting for $STATE_DIR/lock"
    fi
}

case "$ACTION" in
    up|start) lock; do_up ;;
    down|stop) lock; do_down ;;
    status) do_status ;;
esac
