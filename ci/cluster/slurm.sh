# shellcheck shell=bash
# ci/cluster/slurm.sh — a real single-node Slurm (Debian 12: 22.05.x) on loopback:
# munged + slurmctld + slurmd, optionally slurmdbd + MariaDB.  Sourced by ci/cluster-up.sh.
#
# Knobs (environment):
#   SLURM_CPUS=N          CPUs declared for the node (default: max(4, nproc)).  More than the
#                         real cores oversubscribes on purpose (SlurmdParameters=config_overrides)
#                         so that 4 one-cpu worker jobs run at once on a 2-core CI machine.
#   SLURM_ACCOUNTING=0    1: slurmdbd + MariaDB so that `sacct` works (+~10 s install, +~1 s start)
#   SLURM_PROCTRACK=auto  auto|cgroup|linuxproc|pgid (auto: cgroup if the v1 freezer is mounted;
#                         only proctrack/cgroup kills double-forked job processes on scancel)
#   SLURM_PARTITION=debug SLURM_CLUSTER_NAME=impexec
#   SLURM_FRESH=0         1: wipe the controller state (queue, job ids) when starting slurmctld
#   SLURM_PROBE=1         0: skip the end-to-end probe batch job

SLURM_NODE=localhost
SLURM_CONF=/etc/slurm/slurm.conf
SLURM_CGCONF=/etc/slurm/cgroup.conf
SLURM_DBDCONF=/etc/slurm/slurmdbd.conf
SLURM_LOGDIR=/var/log/slurm
SLURM_CTLD_STATE=/var/spool/slurmctld
SLURM_SPOOL=/var/spool/slurmd
SLURM_DB_PASS=impexec-slurmdbd   # loopback-only MariaDB account for slurmdbd (accounting=1 only)

slurm_settings() {
    local n; n=$(nproc)
    SLURM_CPUS_EFF=${SLURM_CPUS:-$(( n > 4 ? n : 4 ))}
    SLURM_PART=${SLURM_PARTITION:-debug}
    SLURM_CLUSTER=${SLURM_CLUSTER_NAME:-impexec}
    SLURM_ACCT=${SLURM_ACCOUNTING:-0}
}

slurm_packages() { # prints the Debian packages still missing
    slurm_settings
    local p
    for p in munge slurmctld slurmd slurm-client; do pkg_installed "$p" || echo "$p"; done
    if [ "$SLURM_ACCT" = 1 ]; then
        for p in slurmdbd mariadb-server; do pkg_installed "$p" || echo "$p"; done
    fi
}

slurm_proctrack() {
    case "${SLURM_PROCTRACK:-auto}" in
        cgroup|linuxproc|pgid) echo "$SLURM_PROCTRACK" ;;
        auto) if grep -q ' /sys/fs/cgroup/freezer cgroup ' /proc/mounts; then echo cgroup; else echo linuxproc; fi ;;
        *) die "SLURM_PROCTRACK must be auto|cgroup|linuxproc|pgid" ;;
    esac
}

slurm_configure() {
    local hw mem pt acct=""
    mkdir -p /etc/slurm "$SLURM_LOGDIR" "$SLURM_CTLD_STATE" "$SLURM_SPOOL"
    hw=$(t slurmd -C | head -1)   # NodeName=vm CPUs=2 Boards=1 ... RealMemory=NNN
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    [ -n "$mem" ] || die "cannot parse 'slurmd -C': $hw"
    # a little below what slurmd measures, or the node drains with "Low RealMemory"
    mem=$((mem * 95 / 100))
    pt=$(slurm_proctrack)
    if [ "$SLURM_ACCT" = 1 ]; then
        acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
    else
        acct="AccountingStorageType=accounting_storage/none"
    fi
    SLURM_CONF_CHANGED=0
    SLURM_DBD_CHANGED=0
    write_if_changed "$SLURM_CONF" 644 <<EOF && SLURM_CONF_CHANGED=1
# Written by impexec ci/cluster-up.sh: single-node Slurm on loopback for tests.
ClusterName=$SLURM_CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/$pt
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# the default batch_sched_delay=3 starts array tasks in 3 s steps
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
$acct
JobCompType=jobcomp/none
StateSaveLocation=$SLURM_CTLD_STATE
SlurmdSpoolDir=$SLURM_SPOOL
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$SLURM_LOGDIR/slurmctld.log
SlurmdLogFile=$SLURM_LOGDIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# scancel/timeout: SIGTERM, SIGKILL 5 s later; finished jobs stay visible (squeue -t all) 300 s
KillWait=5
MinJobAge=300
InactiveLimit=0
# declared CPUs win over what slurmd detects (oversubscription on purpose)
SlurmdParameters=config_overrides
NodeName=$SLURM_NODE NodeAddr=127.0.0.1 CPUs=$SLURM_CPUS_EFF RealMemory=$mem State=UNKNOWN
PartitionName=$SLURM_PART Nodes=$SLURM_NODE Default=YES MaxTime=INFINITE State=UP
EOF
    if [ "$pt" = cgroup ]; then
        write_if_changed "$SLURM_CGCONF" 644 <<EOF && SLURM_CONF_CHANGED=1
# Written by impexec ci/cluster-up.sh: cgroup v1 (hybrid layout); only proctrack uses it.
CgroupPlugin=cgroup/v1
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
    fi
    if [ "$SLURM_ACCT" = 1 ]; then
        write_if_changed "$SLURM_DBDCONF" 600 <<EOF && SLURM_DBD_CHANGED=1
# Written by impexec ci/cluster-up.sh.
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$SLURM_LOGDIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$SLURM_DB_PASS
StorageLoc=slurm_acct_db
EOF
    fi
    return 0
}

slurm_start_munge() {
    SLURM_STARTED_MUNGE=0
    pid_of /run/munge/munged.pid munged >/dev/null && return 0
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating the munge key"
        if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key
    chmod 700 /etc/munge
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    log "starting munged"
    # --force: take over a stale socket left behind by a killed munged
    spawn "$LOG_DIR/munged.out" runuser -u munge -- /usr/sbin/munged --force \
        || die "munged failed to start; see /var/log/munge/munged.log"
    mark slurm munged
    SLURM_STARTED_MUNGE=1
    wait_for 10 munged bash -c 'munge -n | unmunge' || die "munged not working; see /var/log/munge/munged.log"
}

slurm_start_mariadb() {
    if ! pid_of /run/mysqld/mysqld.pid mariadbd >/dev/null; then
        mkdir -p /run/mysqld
        chown mysql:root /run/mysqld
        if [ ! -d /var/lib/mysql/mysql ]; then
            log "initialising the MariaDB data dir"
            t mariadb-install-db --user=mysql >/dev/null
        fi
        log "starting mariadbd"
        # mariadbd does not daemonise: `setsid -f` forks it off.  (Not `spawn ... &`: the
        # background subshell would wait for mariadbd while holding our stdout and lock.)
        spawn "$SLURM_LOGDIR/mariadb.log" setsid -f /usr/sbin/mariadbd --user=mysql \
            --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
            --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900
        mark slurm mariadbd
        wait_for 30 mariadbd mariadb-admin ping || die "mariadbd not up; see $SLURM_LOGDIR/mariadb.log"
    fi
    t mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$SLURM_DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" \
        || die "cannot create the slurm_acct_db database"
}

slurm_start_slurmdbd() {
    if pid_of /run/slurmdbd.pid slurmdbd >/dev/null; then
        [ "$SLURM_DBD_CHANGED" = 1 ] || return 0
        stop_pid slurm slurmdbd /run/slurmdbd.pid slurmdbd
    fi
    log "starting slurmdbd"
    spawn "$LOG_DIR/slurmdbd.out" /usr/sbin/slurmdbd || die "slurmdbd failed; see $SLURM_LOGDIR/slurmdbd.log"
    mark slurm slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster || die "slurmdbd not answering; see $SLURM_LOGDIR/slurmdbd.log"
}

slurm_node_state() { t sinfo -h -n "$SLURM_NODE" -o %T 2>/dev/null | head -1; }
slurm_node_ready() {
    case "$(slurm_node_state)" in
        idle|mixed|allocated|completing) return 0 ;;
        *) return 1 ;;
    esac
}

slurm_running() { # all Slurm daemons alive?
    pid_of /run/munge/munged.pid munged >/dev/null &&
        pid_of /run/slurmctld.pid slurmctld >/dev/null &&
        pid_of /run/slurmd.pid slurmd >/dev/null
}

slurm_up() {
    local t0=$SECONDS ctld sd started=0 j st
    slurm_settings
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then die "Slurm is not installed"; fi
    slurm_configure
    slurm_start_munge
    [ "$SLURM_STARTED_MUNGE" = 1 ] && started=1
    if [ "$SLURM_ACCT" = 1 ]; then
        slurm_start_mariadb
        slurm_start_slurmdbd
    else
        # accounting switched off: stop what an earlier SLURM_ACCOUNTING=1 run started
        if marked slurm slurmdbd; then stop_pid slurm slurmdbd /run/slurmdbd.pid slurmdbd; fi
        if marked slurm mariadbd; then stop_pid slurm mariadbd /run/mysqld/mysqld.pid mariadbd 30; fi
    fi
    ctld=$(pid_of /run/slurmctld.pid slurmctld || true)
    sd=$(pid_of /run/slurmd.pid slurmd || true)
    if [ "$SLURM_CONF_CHANGED" = 1 ] && [ -n "$ctld$sd" ]; then
        # slurmd with a slurm.conf different from slurmctld's is refused; restart both
        log "configuration changed: restarting slurmctld and slurmd"
        stop_pid slurm slurmd /run/slurmd.pid slurmd
        stop_pid slurm slurmctld /run/slurmctld.pid slurmctld
        ctld="" sd=""
    fi
    if [ -z "$ctld" ]; then
        if [ "${SLURM_FRESH:-0}" = 1 ]; then log "SLURM_FRESH=1: wiping $SLURM_CTLD_STATE"; rm -rf "${SLURM_CTLD_STATE:?}"/*; fi
        log "starting slurmctld"
        spawn "$LOG_DIR/slurmctld.out" /usr/sbin/slurmctld || die "slurmctld failed; see $SLURM_LOGDIR/slurmctld.log"
        mark slurm slurmctld
        started=1
    fi
    wait_for 30 "slurmctld" scontrol ping || die "slurmctld not answering; see $SLURM_LOGDIR/slurmctld.log"
    if [ -z "$sd" ]; then
        log "starting slurmd"
        spawn "$LOG_DIR/slurmd.out" /usr/sbin/slurmd -N "$SLURM_NODE" || die "slurmd failed; see $SLURM_LOGDIR/slurmd.log"
        mark slurm slurmd
        started=1
    fi
    if ! wait_for "$WAIT" "node $SLURM_NODE to be idle" slurm_node_ready; then
        st=$(slurm_node_state)
        case "$st" in
            *drain*|down*|*fail*)
                log "node is '$st': resuming it"
                t scontrol update NodeName="$SLURM_NODE" State=RESUME || true
                wait_for 15 "node $SLURM_NODE to be idle" slurm_node_ready \
                    || die "node state '$(slurm_node_state)'; see $SLURM_LOGDIR/slurmd.log" ;;
            *) die "node state '$st'; see $SLURM_LOGDIR/slurmctld.log and slurmd.log" ;;
        esac
    fi
    # a node drained by an earlier run ("Kill task failed") shows as idle+drain: resume it
    if t sinfo -h -n "$SLURM_NODE" -o %T | grep -q drain; then
        log "node is drained: resuming it"
        t scontrol update NodeName="$SLURM_NODE" State=RESUME || true
        started=1
    fi
    if [ "${SLURM_PROBE:-1}" = 1 ] && [ "$started" = 1 ]; then
        # end to end: a one-cpu batch job really runs.  A batch job, not srun: after a
        # (re)start slurmctld waits ~3 s before its first batch scheduling pass, and the
        # tests should not pay for that.  squeue hides finished jobs unless -t all, even
        # for an explicit --jobs=ID (and `-j ID` does not filter: -j takes an optional arg).
        j=$(t sbatch --parsable -J impexec-ci-probe -n1 -t 1 -o /dev/null -e /dev/null -D / --wrap true) \
            || die "sbatch of the probe job failed"
        j=${j%%;*}
        if ! wait_for "$WAIT" "probe job $j" bash -c "[ \"\$(squeue -h --jobs=$j -t all -o %T)\" = COMPLETED ]"; then
            die "probe job $j: $(t squeue -h --jobs="$j" -t all -o '%T %r'); see $SLURM_LOGDIR/slurmctld.log and slurmd.log"
        fi
    fi
    # for the readiness marker
    printf 'slurm=1\nslurm_partition=%s\nslurm_cpus=%s\nslurm_accounting=%s\n' \
        "$SLURM_PART" "$SLURM_CPUS_EFF" "$SLURM_ACCT" >"$STATE_DIR/slurm.info"
    log "ready in $((SECONDS - t0)) s: $(t sinfo -h -N -o 'node=%N state=%T cpus=%c partition=%P' | head -1)"
}

slurm_down() {
    local jobs
    if pid_of /run/slurmctld.pid slurmctld >/dev/null; then
        mapfile -t jobs < <(t squeue -h -o %F 2>/dev/null | sort -u)
        if [ "${#jobs[@]}" -gt 0 ]; then
            log "cancelling ${#jobs[@]} job(s): ${jobs[*]}"
            t scancel "${jobs[@]}" 2>/dev/null || true
            # let slurmstepd kill the job processes before slurmd goes away
            # shellcheck disable=SC2016  # expanded by that bash
            wait_for 20 "Slurm jobs to end" bash -c '[ -z "$(squeue -h -o %i)" ]' || true
        fi
    fi
    if marked slurm slurmd; then stop_pid slurm slurmd /run/slurmd.pid slurmd; fi
    if marked slurm slurmctld; then stop_pid slurm slurmctld /run/slurmctld.pid slurmctld; fi
    if marked slurm slurmdbd; then stop_pid slurm slurmdbd /run/slurmdbd.pid slurmdbd; fi
    if marked slurm mariadbd; then stop_pid slurm mariadbd /run/mysqld/mysqld.pid mariadbd 30; fi
    if marked slurm munged; then stop_pid slurm munged /run/munge/munged.pid munged; fi
    log "down"
}

slurm_status() {
    local n c f p
    for n in munged:/run/munge/munged.pid mariadbd:/run/mysqld/mysqld.pid slurmdbd:/run/slurmdbd.pid \
             slurmctld:/run/slurmctld.pid slurmd:/run/slurmd.pid; do
        c=${n%%:*} f=${n#*:}
        if p=$(pid_of "$f" "$c"); then
            echo "  $c: running, pid $p$(marked slurm "$c" && echo ', started by cluster-up.sh')"
        elif [ "$c" != mariadbd ] && [ "$c" != slurmdbd ]; then
            echo "  $c: stopped"
        fi
    done
    if pid_of /run/slurmctld.pid slurmctld >/dev/null; then
        t sinfo -N -o '%N %T cpus=%c alloc/idle/other/total=%C partition=%P' | sed 's/^/  /'
        echo "  jobs: $(t squeue -h -o %i | wc -l)"
    fi
}
