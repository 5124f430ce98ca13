# shellcheck shell=bash
# ci/cluster/sge.sh — a real single-node (Son of) Grid Engine 8.1.9 (Debian 12) on loopback:
# sge_qmaster + sge_execd, queue all.q@localhost.  Sourced by ci/cluster-up.sh.
#
# Knobs (environment):
#   SGE_SLOTS=N      slots of the queue (default: max(4, nproc); may exceed the cores)
#   SGE_QUEUE=all.q  queue name
#   SGE_PROBE=1      0: skip the end-to-end probe job
#
# Clients (qsub/qstat/qdel/qacct) need no environment: the Debian wrappers read
# /etc/default/gridengine.  Things a launcher must know about this Grid Engine:
#   * job shells are login shells (root's ~/.profile runs): submit an ABSOLUTE interpreter path;
#   * qdel SIGKILLs at once (no SIGTERM grace) and kills only the job's process group;
#   * qstat truncates job names to 10 characters in its table output (use -xml);
#   * finished jobs vanish from qstat at once (qacct knows them).

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
SGE_COMMON=$SGE_ROOT/$SGE_CELL/common
SGE_SPOOL=/var/spool/gridengine
SGE_QM_PID=$SGE_SPOOL/qmaster/qmaster.pid
SGE_HOST=localhost   # the SGE name of this host; the real hostname becomes an alias of it
SGE_EX_PID=$SGE_SPOOL/execd/$SGE_HOST/execd.pid
SGE_CFG_SUM=$SGE_COMMON/impexec-ci.cfgsum

sge_settings() {
    local n; n=$(nproc)
    SGE_SLOTS_EFF=${SGE_SLOTS:-$(( n > 4 ? n : 4 ))}
    SGE_Q=${SGE_QUEUE:-all.q}
}

sge_packages() {
    local p
    for p in gridengine-master gridengine-exec gridengine-client; do pkg_installed "$p" || echo "$p"; done
}

# debconf answers for the gridengine packages (otherwise: no cell is created)
sge_preseed() {
    local pkg
    for pkg in gridengine-common gridengine-client gridengine-master gridengine-exec; do
        printf '%s shared/gridengineconfig boolean true\n%s shared/gridenginecell string default\n%s shared/gridenginemaster string %s\n' \
            "$pkg" "$pkg" "$pkg" "$SGE_HOST"
    done | debconf-set-selections
}

sge_init_cell() {
    local h
    # the master postinst ran init_cluster; redo it if the spool is gone
    if [ ! -e "$SGE_SPOOL/spooldb/sge" ]; then
        log "initialising the cell ($SGE_SPOOL/spooldb)"
        mkdir -p "$SGE_SPOOL/qmaster/job_scripts" "$SGE_SPOOL/spooldb" "$SGE_COMMON"
        [ -e "$SGE_COMMON/bootstrap" ] || install -m 644 -o sgeadmin -g sgeadmin /usr/share/gridengine/default-bootstrap "$SGE_COMMON/bootstrap"
        chown -R sgeadmin:sgeadmin "$SGE_SPOOL/qmaster" "$SGE_SPOOL/spooldb" "$SGE_ROOT/$SGE_CELL"
        t su -s /bin/sh -c "/usr/share/gridengine/scripts/init_cluster $SGE_ROOT $SGE_CELL $SGE_SPOOL/spooldb sgeadmin" sgeadmin >&2 \
            || die "init_cluster failed"
        rm -f "$SGE_CFG_SUM"
    fi
    mkdir -p "$SGE_SPOOL/execd" /run/gridengine
    chown sgeadmin:sgeadmin "$SGE_SPOOL/execd" /run/gridengine
    # SGE insists that gethostname() equals the name the host's IP resolves to.  Here the
    # hostname (e.g. "vm") resolves to 127.0.0.1, whose name is "localhost":
    #   commlib error: access denied (client IP resolved to host name "localhost".
    #   This is not identical to clients host name "vm")
    # Fix, without touching /etc/hosts: make the hostname an alias of "localhost".
    h=$(hostname)
    if ! getent hosts "$h" >/dev/null; then
        # SGE's commlib resolves its own hostname and gives up if that fails
        log "hostname '$h' does not resolve: adding '127.0.0.1 $h' to /etc/hosts"
        echo "127.0.0.1 $h  # added by impexec ci/cluster-up.sh (Grid Engine needs it)" >>/etc/hosts
    fi
    SGE_ALIAS_CHANGED=0
    if [ "$h" != "$SGE_HOST" ]; then
        write_if_changed "$SGE_COMMON/host_aliases" 644 <<<"$SGE_HOST $h" && SGE_ALIAS_CHANGED=1
    elif [ -e "$SGE_COMMON/host_aliases" ]; then
        rm -f "$SGE_COMMON/host_aliases"; SGE_ALIAS_CHANGED=1
    fi
    write_if_changed "$SGE_COMMON/act_qmaster" 644 <<<"$SGE_HOST" && SGE_ALIAS_CHANGED=1
    chown sgeadmin:sgeadmin "$SGE_COMMON/act_qmaster" "$SGE_COMMON"/host_aliases 2>/dev/null || true
    return 0
}

sge_start_qmaster() {
    SGE_STARTED_QMASTER=0
    pid_of "$SGE_QM_PID" sge_qmaster >/dev/null && return 0
    log "starting sge_qmaster"
    spawn "$LOG_DIR/sge_qmaster.out" env SGE_ROOT="$SGE_ROOT" SGE_CELL="$SGE_CELL" /usr/sbin/sge_qmaster \
        || die "sge_qmaster failed; see $SGE_SPOOL/qmaster/messages"
    mark sge sge_qmaster
    SGE_STARTED_QMASTER=1
    wait_for 30 sge_qmaster qconf -sm || die "sge_qmaster not answering; see $SGE_SPOOL/qmaster/messages"
}

# the wanted configuration, as a checksum: re-applied (qconf) only when it changes
sge_config_sum() {
    { echo "v1 $SGE_Q $SGE_SLOTS_EFF $SGE_HOST $(hostname)"; declare -f sge_apply_config; } | md5sum | cut -d' ' -f1
}

sge_apply_config() {
    local d
    d=$(mktemp -d)
    # global: root (uid/gid 0) may run jobs (the default min_uid 1000 rejects them with
    # "your user id 0 is lower than minimum user id 1000"); fast load reports so a fresh
    # execd is usable in seconds; accounting_flush_time=0 so qacct knows a job at once.
    # Continued ("\") lines are joined first.
    t qconf -sconf global | grep -v '^#' | sed -e ':a;/\\$/{N;s/\\\n[[:space:]]*//;ba}' \
        -e 's/^reporting_params .*/reporting_params             accounting=true reporting=false flush_time=00:00:15 accounting_flush_time=00:00:00 joblog=false sharelog=00:00:00/' \
        -e 's/^min_uid .*/min_uid                      0/' \
        -e 's/^min_gid .*/min_gid                      0/' \
        -e 's/^load_report_time .*/load_report_time             00:00:05/' >"$d/global"
    t qconf -Mconf "$d/global" >/dev/null 2>&1 || die "qconf -Mconf failed"
    # scheduler: every second and right after submits/finishes (default: every 15 s)
    t qconf -ssconf | sed \
        -e 's/^schedule_interval .*/schedule_interval                 0:0:1/' \
        -e 's/^flush_submit_sec .*/flush_submit_sec                  1/' \
        -e 's/^flush_finish_sec .*/flush_finish_sec                  1/' >"$d/sconf"
    t qconf -Msconf "$d/sconf" >/dev/null 2>&1 || die "qconf -Msconf failed"
    t qconf -ss 2>/dev/null | grep -qx "$SGE_HOST" || t qconf -as "$SGE_HOST" >/dev/null 2>&1 || die "qconf -as failed"
    t qconf -sh 2>/dev/null | grep -qx "$SGE_HOST" || t qconf -ah "$SGE_HOST" >/dev/null 2>&1 || die "qconf -ah failed"
    if ! t qconf -sel 2>/dev/null | grep -qx "$SGE_HOST"; then
        printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' \
            "$SGE_HOST" >"$d/exechost"
        t qconf -Ae "$d/exechost" >/dev/null 2>&1 || die "qconf -Ae failed"
    fi
    printf 'group_name @allhosts\nhostlist %s\n' "$SGE_HOST" >"$d/hgrp"
    if t qconf -shgrp @allhosts >/dev/null 2>&1; then t qconf -Mhgrp "$d/hgrp"; else t qconf -Ahgrp "$d/hgrp"; fi >/dev/null 2>&1 \
        || die "qconf host group failed"
    # the queue, from the built-in template: N slots, bash, no PEs (the template names PEs
    # that do not exist), no load threshold (np_load_avg=1.75 puts a busy 2-core machine
    # in alarm state and nothing gets scheduled)
    t qconf -sq | sed \
        -e "s/^qname .*/qname                 $SGE_Q/" \
        -e 's/^hostlist .*/hostlist              @allhosts/' \
        -e "s/^slots .*/slots                 $SGE_SLOTS_EFF/" \
        -e 's/^pe_list .*/pe_list               NONE/' \
        -e 's/^load_thresholds .*/load_thresholds       NONE/' \
        -e 's|^shell .*|shell                 /bin/bash|' >"$d/queue"
    if t qconf -sq "$SGE_Q" >/dev/null 2>&1; then t qconf -Mq "$d/queue"; else t qconf -Aq "$d/queue"; fi >/dev/null 2>&1 \
        || die "qconf queue $SGE_Q failed"
    rm -rf "$d"
}

sge_start_execd() {
    SGE_STARTED_EXECD=0
    pid_of "$SGE_EX_PID" sge_execd >/dev/null && return 0
    log "starting sge_execd"
    # clean environment as an init system would give it: a job submitted without -V gets
    # its environment from execd's
    spawn "$LOG_DIR/sge_execd.out" env SGE_ROOT="$SGE_ROOT" SGE_CELL="$SGE_CELL" /usr/sbin/sge_execd \
        || die "sge_execd failed; see $SGE_SPOOL/execd/$SGE_HOST/messages"
    mark sge sge_execd
    SGE_STARTED_EXECD=1
}

# queue@localhost listed with a load value and no state letters (u, a, d, E, ...)
sge_queue_ready() {
    local line
    line=$(t qstat -f -q "$SGE_Q@$SGE_HOST" 2>/dev/null | awk -v q="$SGE_Q@$SGE_HOST" '$1==q')
    [ -n "$line" ] || return 1
    [ "$(awk '{print $4}' <<<"$line")" != "-NA-" ] || return 1
    [ "$(awk '{print NF}' <<<"$line")" -le 5 ]
}

sge_running() {
    pid_of "$SGE_QM_PID" sge_qmaster >/dev/null && pid_of "$SGE_EX_PID" sge_execd >/dev/null
}

sge_up() {
    local t0=$SECONDS sum
    sge_settings
    if ! command -v sge_qmaster >/dev/null || ! command -v qsub >/dev/null; then die "Grid Engine is not installed"; fi
    sge_init_cell
    if [ "$SGE_ALIAS_CHANGED" = 1 ] && pid_of "$SGE_QM_PID" sge_qmaster >/dev/null; then
        log "host aliases changed: restarting sge_qmaster and sge_execd"
        stop_pid sge sge_execd "$SGE_EX_PID" sge_execd
        stop_pid sge sge_qmaster "$SGE_QM_PID" sge_qmaster 20
    fi
    sge_start_qmaster
    sum=$(sge_config_sum)
    if [ "$(cat "$SGE_CFG_SUM" 2>/dev/null)" != "$sum" ] || ! t qconf -sq "$SGE_Q" >/dev/null 2>&1; then
        log "applying the configuration (queue $SGE_Q, $SGE_SLOTS_EFF slots)"
        sge_apply_config
        echo "$sum" >"$SGE_CFG_SUM"
    fi
    if [ "$SGE_STARTED_QMASTER" = 1 ] && marked sge sge_execd && pid_of "$SGE_EX_PID" sge_execd >/dev/null; then
        # an execd that outlived its qmaster re-registers only after ~15 s: restart it
        log "sge_qmaster was restarted: restarting sge_execd too"
        stop_pid sge sge_execd "$SGE_EX_PID" sge_execd
    fi
    sge_start_execd
    if ! sge_queue_ready; then
        # clear an error/disabled state left by an earlier run (e.g. a failed shepherd)
        t qmod -c "$SGE_Q@$SGE_HOST" >/dev/null 2>&1 || true
        t qmod -e "$SGE_Q@$SGE_HOST" >/dev/null 2>&1 || true
        wait_for "$WAIT" "$SGE_Q@$SGE_HOST to become usable" sge_queue_ready \
            || die "queue not ready: $(t qstat -f -q "$SGE_Q@$SGE_HOST" 2>&1 | tail -1); see $SGE_SPOOL/execd/$SGE_HOST/messages"
    fi
    if [ "${SGE_PROBE:-1}" = 1 ] && [ "$SGE_STARTED_QMASTER$SGE_STARTED_EXECD" != 00 ]; then
        # end to end: a job really runs, as root
        timeout -k 5 "$WAIT" qsub -sync y -b y -N impexec-ci-probe -wd / -o /dev/null -e /dev/null /bin/true >/dev/null \
            || die "probe job failed; see $SGE_SPOOL/qmaster/messages and $SGE_SPOOL/execd/$SGE_HOST/messages"
    fi
    printf 'sge=1\nsge_queue=%s\nsge_slots=%s\n' "$SGE_Q" "$SGE_SLOTS_EFF" >"$STATE_DIR/sge.info"
    log "ready in $((SECONDS - t0)) s: $(t qstat -f -q "$SGE_Q@$SGE_HOST" | awk -v q="$SGE_Q@$SGE_HOST" '$1==q{print $1, "slots(resv/used/tot)=" $3}')"
}

sge_no_jobs() { ! sge_jobs_left; }
sge_jobs_left() { [ -n "$(t qstat -u '*' 2>/dev/null | tail -n +3)" ]; }

sge_down() {
    if pid_of "$SGE_QM_PID" sge_qmaster >/dev/null && sge_jobs_left; then
        log "deleting all jobs"
        t qdel -f -u '*' >/dev/null 2>&1 || true
        wait_for 20 "SGE jobs to go" sge_no_jobs || true
    fi
    if marked sge sge_execd; then stop_pid sge sge_execd "$SGE_EX_PID" sge_execd; fi
    # sge_qmaster needs 8-9 s to exit on SIGTERM
    if marked sge sge_qmaster; then stop_pid sge sge_qmaster "$SGE_QM_PID" sge_qmaster 20; fi
    log "down"
}

sge_status() {
    local p
    sge_settings
    if p=$(pid_of "$SGE_QM_PID" sge_qmaster); then echo "  sge_qmaster: running, pid $p$(marked sge sge_qmaster && echo ', started by cluster-up.sh')"; else echo "  sge_qmaster: stopped"; fi
    if p=$(pid_of "$SGE_EX_PID" sge_execd); then echo "  sge_execd: running, pid $p$(marked sge sge_execd && echo ', started by cluster-up.sh')"; else echo "  sge_execd: stopped"; fi
    if pid_of "$SGE_QM_PID" sge_qmaster >/dev/null; then
        t qstat -f -q "$SGE_Q" 2>&1 | awk 'NR>2 && NF' | sed 's/^/  /'
        echo "  jobs: $(t qstat -u '*' 2>/dev/null | tail -n +3 | wc -l)"
    fi
}
