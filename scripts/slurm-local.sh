#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for qlab's SLURM tests and for trying the backend on a laptop.
#
#   scripts/slurm-local.sh start [DIR]   # start munged, slurmctld and slurmd; prints `export SLURM_CONF=...`
#   scripts/slurm-local.sh stop [DIR]    # stop the daemons this script started (by their pid files)
#
# Needs root and Debian's packages: apt-get install -y slurm-wlm munge (SLURM 22.05 on bookworm).
# DIR (default /tmp/qlab-slurm) holds slurm.conf, state, spool, logs and pid files. The node has this machine's
# cores, no GPUs, and one partition `debug`; jobs get 1000 MB per CPU unless they ask for memory.
# Use it with: eval "$(scripts/slurm-local.sh start)"; then sbatch, squeue, scancel and scontrol work.
set -euo pipefail

cmd=${1:-start}
dir=${2:-/tmp/qlab-slurm}
conf="$dir/slurm.conf"

say() { echo "slurm-local: $*" >&2; }

stop() {
  for name in slurmd slurmctld munged; do
    pidfile="$dir/$name.pid"
    if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      kill "$(cat "$pidfile")" && say "stopped $name"
    fi
    rm -f "$pidfile"
  done
}

if [[ "$cmd" == stop ]]; then
  stop
  exit 0
fi
if [[ "$cmd" != start ]]; then
  echo "usage: $0 start|stop [DIR]" >&2
  exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "slurm-local: run as root (the daemons run as root; munged as the munge user)" >&2
  exit 1
fi
for tool in munged slurmctld slurmd sbatch; do
  command -v "$tool" >/dev/null || PATH="$PATH:/usr/sbin"
  command -v "$tool" >/dev/null || { echo "slurm-local: $tool not found: apt-get install -y slurm-wlm munge" >&2; exit 1; }
done

host=$(hostname -s)
mkdir -p "$dir"/{state,spool,log}
chmod 755 "$dir"

# munge: one key, a socket in /run/munge, the daemon as the munge user.
if [[ ! -s /etc/munge/munge.key ]]; then
  mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! munge -n </dev/null >/dev/null 2>&1; then
  runuser -u munge -- munged 2>>"$dir/log/munged.err"
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
  cp /run/munge/munged.pid "$dir/munged.pid"
  say "munged started"
fi

cat >"$conf" <<EOF
ClusterName=qlab-local
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
KillWait=10
MinJobAge=600
SchedulerParameters=sched_interval=2
NodeName=$host CPUs=$(nproc) RealMemory=$(( $(nproc) * 1000 + 1000 )) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$conf"

running() { [[ -f "$dir/$1.pid" ]] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }
if ! running slurmctld; then
  slurmctld -c -f "$conf"   # -c: a clean start, no jobs from an earlier cluster
  say "slurmctld started"
fi
if ! running slurmd; then
  slurmd -f "$conf"
  say "slurmd started"
fi
for _ in $(seq 120); do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
  [[ "$state" == idle* || "$state" == mixed* || "$state" == allocated* ]] && break
  sleep 0.5
done
if [[ "$state" != idle* && "$state" != mixed* && "$state" != allocated* ]]; then
  echo "slurm-local: node $host did not come up (state '${state:-none}'); see $dir/log/" >&2
  exit 1
fi
say "node $host is $state; cluster config $conf"
echo "export SLURM_CONF=$conf"
