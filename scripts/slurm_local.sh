#!/usr/bin/env bash
# A one-node SLURM cluster on this host, for the tests and for trying `--executor slurm`:
#
#   scripts/slurm_local.sh start    install slurm-wlm + munge when missing (Debian/Ubuntu, root or sudo),
#                                   write the config, start munged, slurmctld and slurmd; wait until idle
#   scripts/slurm_local.sh status   the daemons this script started, and sinfo
#   scripts/slurm_local.sh stop     stop exactly those daemons (by the pids they wrote), nothing else
#
# State, logs, pid files and the munge key live in $SELFSUP_SLURM_DIR (default /tmp/selfsup-slurm);
# the only file outside it is /etc/slurm/slurm.conf (where sinfo, sbatch and srun look for it), which
# is written only when absent or written by this script before: a real cluster's config is never touched.
# No accounting database (slurmdbd + MariaDB): submitit's sacct calls would fail, so selfsup.cluster
# reads job states from squeue instead (finished jobs stay listed for MinJobAge seconds).
set -euo pipefail

DIR=${SELFSUP_SLURM_DIR:-/tmp/selfsup-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by selfsup scripts/slurm_local.sh"
DAEMONS=(slurmd slurmctld munged)  # stopped in this order, started in the reverse

say() { echo "slurm_local: $*" >&2; }
die() { say "error: $*"; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

alive() {  # alive NAME: the daemon this script started is running
    local pid
    pid=$(cat "$DIR/$1.pid" 2>/dev/null) || return 1
    # a killed daemon whose parent never reaps it stays a zombie (state Z): kill -0 still succeeds on it
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] \
        && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and there is no apt-get: install SLURM and munge"
    say "installing slurm-wlm and munge (apt-get)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
    local host mem
    host=$(hostname -s)
    # What slurmd may hand out: 2 CPUs (two array tasks, or a 2-process gloo job, at once) and the
    # memory free reports less 10% (config_overrides: these values, whatever the machine has).
    mem=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')
    if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script (a real cluster's?); not touching it"
    fi
    mkdir -p "$DIR"/{state,spool,log,munge}
    as_root mkdir -p "$(dirname "$CONF")"
    as_root tee "$CONF" >/dev/null <<EOF
$MARK ($DIR holds its state and logs)
ClusterName=selfsup
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
NodeName=$host CPUs=2 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    if alive slurmctld && alive slurmd && alive munged; then
        say "already running ($DIR)"
        status
        return
    fi
    local t0=$SECONDS
    install
    write_conf
    [ -s "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key" --force
    chmod 700 "$DIR/munge"
    chmod 600 "$DIR/munge/munge.key"
    alive munged || munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    # -c: no job state from an earlier start (a killed test session must not leave jobs holding the node)
    alive slurmctld || slurmctld -c
    alive slurmd || slurmd -c
    local host state=""
    host=$(hostname -s)
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
        case "$state" in
            idle* | mixed* | allocated*) break ;;
            down* | drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    case "$state" in
        idle* | mixed* | allocated*) say "started in $((SECONDS - t0)) s: node $host $state (logs: $DIR/log)" ;;
        *) die "node $host did not come up (state '${state:-none}'); see $DIR/log/slurmctld.log and slurmd.log" ;;
    esac
}

stop() {
    local name pid
    for name in "${DAEMONS[@]}"; do
        if alive "$name"; then
            pid=$(cat "$DIR/$name.pid")
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            say "stopped $name (pid $pid)"
        fi
    done
}

status() {
    local name
    for name in "${DAEMONS[@]}"; do
        if alive "$name"; then echo "$name: running (pid $(cat "$DIR/$name.pid"))"; else echo "$name: stopped"; fi
    done
    if alive slurmctld; then sinfo; fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
