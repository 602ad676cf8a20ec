#!/usr/bin/env bash
# A real one-node Slurm cluster in one folder, for the tests (or for trying the Slurm paths).
#
#   scripts/slurm/local-cluster.sh start [DIR]   # then: export SLURM_CONF=DIR/slurm.conf
#   scripts/slurm/local-cluster.sh status [DIR]
#   scripts/slurm/local-cluster.sh stop [DIR]
#
# DIR (default: $SLURM_LOCAL_CLUSTER_DIR, else .slurm-local) holds everything: munge's key and
# socket, a MariaDB database for accounting (so that sacct has a history), slurmdbd, slurmctld
# and slurmd with this machine's cores and memory in one partition, their logs, state and pid
# files. Nothing is written outside DIR except, when they are missing, the Debian packages
# (slurmctld slurmd slurm-client slurmdbd munge mariadb-server), installed with apt-get: that
# needs root, as running slurmd does. Without root, `start` exits 77 saying so.
#
# `stop` cancels the cluster's jobs, then stops the daemons this script started, by the process
# ids in DIR/run, and checks that no process of the cluster's is left (jobs included).
set -euo pipefail

CMD=${1:-}
DIR=${2:-${SLURM_LOCAL_CLUSTER_DIR:-.slurm-local}}
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
CLUSTER=codegpt-local
PARTITION=${SLURM_LOCAL_PARTITION:-debug}

die() { echo "local-cluster: $*" >&2; exit "${RC:-1}"; }
say() { echo "local-cluster: $*" >&2; }

[ -n "$CMD" ] || die "usage: $0 start|status|stop [DIR]"
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
RUN=$DIR/run
LOG=$DIR/log
export SLURM_CONF=$DIR/slurm.conf
# MariaDB listens on a socket in DIR only; slurmdbd's client library finds it through this.
export MYSQL_UNIX_PORT=$DIR/db/mysqld.sock

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# pid of a daemon this script started, if it is still that program
running_pid() {
  local name=$1 pidfile=$RUN/$1.pid pid
  [ -s "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  [ -d "/proc/$pid" ] || return 1
  grep -qa -- "$name" "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

install_packages() {
  local missing=()
  for cmd in slurmctld slurmd sbatch slurmdbd munged mariadbd; do
    command -v "$cmd" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$cmd" >/dev/null 2>&1 \
      || missing+=("$cmd")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || RC=77 die "needs root to install ${missing[*]} (Debian packages ${PACKAGES[*]})"
  command -v apt-get >/dev/null || RC=77 die "${missing[*]} missing and no apt-get to install them"
  say "installing ${PACKAGES[*]}"
  # no daemon may start on installation: this script starts its own, in $DIR
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; created=1; fi
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}" >"$DIR/apt.log" 2>&1 \
    || { apt-get update -qq >>"$DIR/apt.log" 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}" >>"$DIR/apt.log" 2>&1; }; } \
    || { [ $created = 1 ] && rm -f $policy; RC=77 die "apt-get install failed: see $DIR/apt.log"; }
  [ $created = 1 ] && rm -f $policy
  return 0
}

write_configs() {
  local node cpus mem_mb ctld_port slurmd_port dbd_port
  node=$(hostname -s)
  cpus=$(nproc)
  # leave a tenth of the memory to the system; jobs ask for theirs (--mem-per-cpu)
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
  ctld_port=$(free_port); slurmd_port=$(free_port); dbd_port=$(free_port)
  mkdir -p "$RUN" "$LOG" "$DIR/state" "$DIR/spool" "$DIR/munge" "$DIR/db"
  chmod 755 "$DIR/munge"  # the socket is for every user of the cluster; the key is root's
  chmod 700 "$DIR/db"
  [ -s "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key"
  chmod 400 "$DIR/munge/munge.key"
  : > "$DIR/plugstack.conf"
  cat > "$SLURM_CONF" <<EOF
# written by scripts/slurm/local-cluster.sh: one node, this machine
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
PlugStackConfig=$DIR/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
AccountingStoragePass=$DIR/munge/munge.socket
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( mem_mb / cpus ))
MpiDefault=none
ReturnToService=2
KillWait=30
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=localhost
DbdPort=$dbd_port
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/slurmdbd.conf"
}

node_idle() { [ "$(sinfo -h -p "$PARTITION" -o %t 2>/dev/null)" = idle ]; }

wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local until=$((SECONDS + $1)) what=$2; shift 2
  while [ $SECONDS -lt $until ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not come up within ${secs}s; logs in $LOG"
}

start() {
  if running_pid slurmctld >/dev/null && running_pid slurmd >/dev/null; then
    say "already running in $DIR"; status; return 0
  fi
  [ "$(id -u)" = 0 ] || RC=77 die "needs root (slurmd runs jobs as their users)"
  install_packages
  export PATH=$PATH:/usr/sbin
  write_configs

  munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" --seed-file="$DIR/munge/munged.seed"
  wait_for 10 munged running_pid munged

  if [ ! -d "$DIR/db/data/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$DIR/db/data" --user=root \
      --auth-root-authentication-method=normal --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed: see $LOG/mariadb-install.log"
  fi
  # socket only (no TCP port), in DIR
  setsid mariadbd --no-defaults --datadir="$DIR/db/data" --socket="$MYSQL_UNIX_PORT" \
    --skip-networking --user=root --pid-file="$RUN/mariadbd.pid" --log-error="$LOG/mariadb.log" \
    </dev/null >/dev/null 2>&1 &
  wait_for 60 MariaDB test -S "$MYSQL_UNIX_PORT"

  slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
  slurmctld
  wait_for 30 slurmctld scontrol ping
  slurmd -N "$(hostname -s)"
  wait_for 30 "an idle node" node_idle
  say "up: partition $PARTITION, $(sinfo -h -o '%c CPUs, %m MB' | head -n 1); export SLURM_CONF=$SLURM_CONF"
}

status() {
  local name pid
  for name in munged mariadbd slurmdbd slurmctld slurmd; do
    if pid=$(running_pid $name); then echo "$name $pid"; else echo "$name stopped"; fi
  done
  [ -e "$SLURM_CONF" ] && running_pid slurmctld >/dev/null && sinfo || true
}

# processes of the cluster's jobs: slurmstepd and what it started work in the spool folder or
# carry this cluster's configuration in their environment
job_processes() {
  local pid
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [ "$pid" = $$ ] && continue
    if [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$DIR/spool" ] \
       || { grep -qa '^slurmstepd' "/proc/$pid/cmdline" 2>/dev/null \
            && tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "SLURM_CONF=$SLURM_CONF"; }; then
      echo "$pid"
    fi
  done
}

stop_pid() {  # stop_pid NAME: TERM, then KILL after 20 s
  local name=$1 pid
  pid=$(running_pid "$name") || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
  if [ -d "/proc/$pid" ]; then say "$name ($pid) did not stop: killing it"; kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$RUN/$name.pid"
}

stop() {
  export PATH=$PATH:/usr/sbin
  if running_pid slurmctld >/dev/null; then
    scancel --full -u "$(id -un)" 2>/dev/null || true
    for _ in $(seq 1 200); do
      [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  for name in slurmd slurmctld slurmdbd mariadbd munged; do stop_pid $name; done
  local left
  left=$(job_processes | tr '\n' ' ')
  if [ -n "$left" ]; then
    say "killing what the cluster's jobs left: $left"
    kill -KILL $left 2>/dev/null || true
  fi
  say "stopped"
}

case "$CMD" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|status|stop [DIR]" ;;
esac
