#!/usr/bin/env bash
# A single-node Slurm on localhost, for ablate's `--executor slurm` tests and for trying
# the executor on one machine. Debian's `slurm-wlm` and `munge` packages, no systemd
# (containers): munged, slurmctld and slurmd run as plain daemons.
#
#   scripts/slurm-local.sh          install if missing, configure, start, wait for the node
#   scripts/slurm-local.sh stop     stop the three daemons
#   scripts/slurm-local.sh status   sinfo, or exit 1 when Slurm is not answering
#
# Idempotent: running it again with everything up only checks the node is idle. Must run
# as root (it installs packages and starts daemons as root). The node gets this host's
# real CPU count and memory; job memory is scheduled (CR_Core_Memory) but not fenced by
# cgroups (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none work in a container).
set -euo pipefail

CONF_DIR=/etc/slurm
STATE=/var/lib/slurm-local
LOGS=/var/log/slurm-local
HOST=localhost

log() { echo "slurm-local: $*" >&2; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
  for d in slurmd slurmctld munged; do
    local pidfile
    case $d in
      munged) pidfile=/run/munge/munged.pid ;;
      *) pidfile=/run/slurm-local/$d.pid ;;
    esac
    if pid_alive "$pidfile"; then
      kill "$(cat "$pidfile")" && log "stopped $d"
    fi
  done
}

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v munged >/dev/null && command -v sbatch >/dev/null; then
    return
  fi
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends slurm-wlm munge
}

configure() {
  local cpus mem_mb
  cpus=$(nproc --all)
  # Leave 10% (at least 256 MB) of the memory to the system: slurmd refuses a node
  # whose configured memory exceeds what it finds.
  mem_mb=$(awk '/MemTotal/ {m = int($2 / 1024); r = int(m / 10); if (r < 256) r = 256; print m - r}' /proc/meminfo)
  mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$LOGS" /run/slurm-local
  cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by ablate's scripts/slurm-local.sh: one node, this host.
ClusterName=ablate-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=/run/slurm-local/slurmctld.pid
SlurmdPidFile=/run/slurm-local/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# Finished jobs stay visible to squeue for 5 minutes (MinJobAge), as on most clusters.
MinJobAge=300
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$CONF_DIR/cgroup.conf" <<EOF
# Not used (proctrack/linuxproc, task/none); present because some slurm tools look for it.
CgroupPlugin=autodetect
EOF
  log "configured $HOST: CPUs=$cpus RealMemory=${mem_mb}M"
}

start_munge() {
  if pid_alive /run/munge/munged.pid; then return; fi
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 0400 /etc/munge/munge.key
  chmod 0700 /etc/munge
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- munged
  else
    munged --force
  fi
  log "started munged"
}

start_slurm() {
  if ! pid_alive /run/slurm-local/slurmctld.pid; then
    slurmctld
    log "started slurmctld"
  fi
  if ! pid_alive /run/slurm-local/slurmd.pid; then
    slurmd
    log "started slurmd"
  fi
}

wait_idle() {
  local i state
  for i in $(seq 1 60); do
    state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null || true)
    case $state in
      idle | mix | alloc)
        log "node $HOST is $state"
        return 0 ;;
      down* | drain* | fail*)
        # A node left down by an earlier run of the daemons: return it to service.
        scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
  done
  log "the node did not become idle in 60 s (state: ${state:-no answer}); see $LOGS/"
  tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
  return 1
}

case ${1:-start} in
  start)
    [ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
    install
    configure
    start_munge
    start_slurm
    wait_idle
    ;;
  stop) stop ;;
  status) sinfo ;;
  *)
    echo "usage: $0 [start|stop|status]" >&2
    exit 2 ;;
esac
