#!/usr/bin/env bash
# A throwaway single-node Slurm cluster (slurmctld + slurmd + munge) with all state in one folder,
# for the Slurm executor's tests. Nothing is written to /etc; clients find it through SLURM_CONF.
#
#   scripts/slurm-cluster.sh install        # apt-get the daemons (root; idempotent)
#   scripts/slurm-cluster.sh start DIR      # start; prints `export SLURM_CONF=DIR/slurm.conf`
#   scripts/slurm-cluster.sh stop DIR       # stop the daemons started in DIR
#
# Facts this relies on (measured here): ../shared/reference/slurm-notes.md.
set -euo pipefail

cmd="${1:-}"
case "$cmd" in
install)
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
     && command -v munged >/dev/null; then
    exit 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  ;;
start)
  dir="$(mkdir -p "$2" && cd "$2" && pwd)"
  port_base="${SLURM_PORT_BASE:-16817}"
  mkdir -p "$dir"/{state,spool,log,munge}
  chmod 755 "$dir" "$dir/munge"
  if [ ! -f "$dir/munge/munge.key" ]; then
    head -c 1024 /dev/urandom > "$dir/munge/munge.key"
    chmod 400 "$dir/munge/munge.key"
  fi
  munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munge.seed" \
    --log-file="$dir/log/munged.log"
  cpus="$(nproc)"
  mem_mb="$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)"
  cat > "$dir/slurm.conf" <<EOF
ClusterName=adaptor-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$port_base
SlurmdPort=$((port_base + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
DependencyParameters=kill_invalid_depend
MinJobAge=3600
ReturnToService=2
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
AccountingStorageType=accounting_storage/none
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF" -N localhost
  # Wait for the node to be idle.
  for _ in $(seq 1 100); do
    if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
      echo "export SLURM_CONF=$SLURM_CONF"
      exit 0
    fi
    sleep 0.1
  done
  echo "slurm did not come up; logs in $dir/log" >&2
  exit 1
  ;;
stop)
  dir="$2"
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    # PID 1 may reap late: a zombie still answers kill -0, so look at the process state.
    for _ in $(seq 1 50); do
      state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)"
      [ "$state" = gone ] || [ "$state" = Z ] && break
      sleep 0.1
    done
  done
  ;;
*)
  echo "usage: $0 install | start DIR | stop DIR" >&2
  exit 2
  ;;
esac
