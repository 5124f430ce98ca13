# shellcheck shell=bash
# ci/cluster/sshd.sh — a private sshd on 127.0.0.1:2222 that lets root in with a key pair
# generated here.  It has its own config, host key, authorized_keys and PID file, and does
# not touch the system sshd (/etc/ssh/sshd_config) or root's ~/.ssh/authorized_keys.
# Sourced by ci/cluster-up.sh.
#
# Knobs (environment):
#   IMPEXEC_SSH_PORT=2222
#   IMPEXEC_SSH_KEY=/root/.ssh/impexec_ci_ed25519   client key (private; .pub next to it)
#
# Connect with (also written as `Host impexec-ci` to root's ~/.ssh/config):
#   ssh -i /root/.ssh/impexec_ci_ed25519 -p 2222 -o BatchMode=yes -o StrictHostKeyChecking=no \
#       -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1 python3 -c 'print(1)'

SSHD_ETC=/etc/impexec-cluster/ssh
SSHD_CONFIG=$SSHD_ETC/sshd_config
SSHD_HOSTKEY=$SSHD_ETC/ssh_host_ed25519_key
SSHD_AUTH_KEYS=$SSHD_ETC/authorized_keys
SSHD_ALIAS=impexec-ci

sshd_settings() {
    local home
    home=$(getent passwd root | cut -d: -f6)
    SSH_HOME=${home:-/root}
    SSH_PORT=${IMPEXEC_SSH_PORT:-2222}
    SSH_KEY=${IMPEXEC_SSH_KEY:-$SSH_HOME/.ssh/impexec_ci_ed25519}
    SSHD_PIDFILE=$STATE_DIR/sshd-$SSH_PORT.pid
    SSH_OPTS=(-i "$SSH_KEY" -p "$SSH_PORT" -o BatchMode=yes -o StrictHostKeyChecking=no
              -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o IdentitiesOnly=yes)
}

sshd_packages() {
    pkg_installed openssh-server || echo openssh-server
}

sshd_configure() {
    mkdir -p "$SSHD_ETC" "$SSH_HOME/.ssh" /run/sshd
    chmod 755 /etc/impexec-cluster "$SSHD_ETC"
    chmod 700 "$SSH_HOME/.ssh"
    chmod 755 /run/sshd   # privilege separation directory; sshd refuses to start without it
    [ -s "$SSHD_HOSTKEY" ] || ssh-keygen -q -t ed25519 -N '' -C "impexec-ci-host" -f "$SSHD_HOSTKEY" </dev/null >/dev/null
    if [ ! -s "$SSH_KEY" ] || [ ! -s "$SSH_KEY.pub" ]; then
        log "generating the client key $SSH_KEY"
        rm -f "$SSH_KEY" "$SSH_KEY.pub"
        ssh-keygen -q -t ed25519 -N '' -C "impexec-ci" -f "$SSH_KEY" </dev/null >/dev/null
    fi
    # only from loopback; no agent/X11 forwarding needed
    write_if_changed "$SSHD_AUTH_KEYS" 644 <<<"from=\"127.0.0.1\",no-agent-forwarding,no-X11-forwarding $(cat "$SSH_KEY.pub")" || true
    SSHD_CONF_CHANGED=0
    # UsePAM yes: with UsePAM no, sshd refuses root if root's password is locked ("!...")
    write_if_changed "$SSHD_CONFIG" 644 <<EOF && SSHD_CONF_CHANGED=1
# Written by impexec ci/cluster-up.sh: loopback-only sshd for the SSH launcher tests.
Port $SSH_PORT
ListenAddress 127.0.0.1
AddressFamily inet
HostKey $SSHD_HOSTKEY
PidFile $SSHD_PIDFILE
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile $SSHD_AUTH_KEYS
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding no
PrintMotd no
PrintLastLog no
UseDNS no
# many workers connect at once in the tests
MaxStartups 100:30:200
MaxSessions 100
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
EOF
    sshd_write_client_config
    return 0
}

# a `Host impexec-ci` block in root's ~/.ssh/config, between markers, replaced in place
sshd_write_client_config() {
    local cfg=$SSH_HOME/.ssh/config tmp begin="# >>> impexec-ci (written by ci/cluster-up.sh)" end="# <<< impexec-ci"
    tmp=$(mktemp)
    if [ -f "$cfg" ]; then
        awk -v b="$begin" -v e="$end" '$0==b{skip=1; next} $0==e{skip=0; next} !skip' "$cfg" >"$tmp"
    fi
    cat >>"$tmp" <<EOF
$begin
Host $SSHD_ALIAS
    HostName 127.0.0.1
    Port $SSH_PORT
    User root
    IdentityFile $SSH_KEY
    IdentitiesOnly yes
    BatchMode yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
$end
EOF
    write_if_changed "$cfg" 600 <"$tmp" || true
    rm -f "$tmp"
}

sshd_probe() {
    timeout -k 2 10 ssh "${SSH_OPTS[@]}" -o ConnectTimeout=5 root@127.0.0.1 true </dev/null >/dev/null 2>&1
}

sshd_write_info() { # for the readiness marker
    printf 'ssh=127.0.0.1:%s:%s\nssh_alias=%s\n' "$SSH_PORT" "$SSH_KEY" "$SSHD_ALIAS" >"$STATE_DIR/ssh.info"
}

sshd_running() { sshd_settings; pid_of "$SSHD_PIDFILE" sshd >/dev/null; }

sshd_up() {
    local t0=$SECONDS p
    sshd_settings
    [ -x /usr/sbin/sshd ] || die "openssh-server is not installed"
    sshd_configure
    /usr/sbin/sshd -t -f "$SSHD_CONFIG" || die "sshd -t -f $SSHD_CONFIG failed"
    if p=$(pid_of "$SSHD_PIDFILE" sshd); then
        if [ "$SSHD_CONF_CHANGED" = 1 ]; then
            log "configuration changed: restarting sshd"
            stop_pid ssh sshd "$SSHD_PIDFILE" sshd 5
        elif sshd_probe; then
            sshd_write_info
            log "ready: ssh ${SSH_OPTS[*]} root@127.0.0.1"
            return 0
        else
            log "sshd (pid $p) does not accept our key: restarting it"
            stop_pid ssh sshd "$SSHD_PIDFILE" sshd 5
        fi
    fi
    if port_in_use "$SSH_PORT"; then
        die "port $SSH_PORT is in use by another program: $(ss -Hltnp "sport = :$SSH_PORT" | head -1)"
    fi
    log "starting sshd on 127.0.0.1:$SSH_PORT"
    mkdir -p "$LOG_DIR"
    # -E: log to a file (there is no syslog daemon here)
    spawn "$LOG_DIR/sshd.out" /usr/sbin/sshd -f "$SSHD_CONFIG" -E "$LOG_DIR/sshd.log" \
        || die "sshd failed to start; see $LOG_DIR/sshd.log"
    mark ssh sshd
    wait_for 15 "ssh to 127.0.0.1:$SSH_PORT" sshd_probe || die "ssh to 127.0.0.1:$SSH_PORT fails; see $LOG_DIR/sshd.log"
    sshd_write_info
    log "ready in $((SECONDS - t0)) s: ssh ${SSH_OPTS[*]} root@127.0.0.1"
}

sshd_down() {
    sshd_settings
    if marked ssh sshd; then stop_pid ssh sshd "$SSHD_PIDFILE" sshd 5; fi
    log "down"
}

sshd_status() {
    local p
    sshd_settings
    if p=$(pid_of "$SSHD_PIDFILE" sshd); then
        echo "  sshd: running on 127.0.0.1:$SSH_PORT, pid $p$(marked ssh sshd && echo ', started by cluster-up.sh')"
        if [ ! -r "$SSH_KEY" ]; then echo "  login: not tested ($SSH_KEY is not readable)"
        elif sshd_probe; then echo "  login: ok (ssh $SSHD_ALIAS, or: ssh ${SSH_OPTS[*]} root@127.0.0.1)"; else echo "  login: FAILS"; fi
    else
        echo "  sshd: stopped"
    fi
}
