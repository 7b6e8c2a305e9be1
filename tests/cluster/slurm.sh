#!/usr/bin/env bash
# A single-node Slurm cluster for the tests, private to one directory:
#
#     tests/cluster/slurm.sh start DIR   # prints "SLURM_CONF=DIR/slurm.conf" once the node is idle
#     tests/cluster/slurm.sh stop DIR    # stops the daemons it started there, by pid
#
# munged, slurmctld and slurmd run with their key, socket, state, spool, logs and pid files in
# DIR, on free ports, so nothing system-wide is touched and daemons already running (a system
# munged or Slurm) are left alone. Needs root (slurmd does) and the Debian packages slurm-wlm
# and munge; exits 2 when they are missing, so callers can skip rather than fail.
set -euo pipefail

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 64
}

[ "$#" -eq 2 ] || usage
action="$1"
dir="$(mkdir -p "$2" && cd "$2" && pwd -P)"
conf="${dir}/slurm.conf"
# munged needs every directory above its socket to be searchable by all, which DIR (e.g. a
# pytest temporary directory) need not be: its files go to a directory of their own in /tmp,
# recorded here
munge_record="${dir}/munge-dir"

missing() {
    echo "slurm.sh: $*" >&2
    exit 2
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Stops the daemons whose pids the given files recorded, each only while that pid is still
# the program named beside it (pid files are "FILE:PROGRAM"); waits for them together.
stop_pid_files() {
    local entry pid_file program pid pids=()
    for entry in "$@"; do
        pid_file="${entry%%:*}"
        program="${entry##*:}"
        [ -f "${pid_file}" ] || continue
        pid="$(cat "${pid_file}")"
        if [ -n "${pid}" ] && [ "$(cat "/proc/${pid}/comm" 2>/dev/null)" = "${program}" ]; then
            kill "${pid}" 2>/dev/null && pids+=("${pid}")
        fi
        rm -f "${pid_file}"
    done
    for _ in $(seq 100); do
        local running=()
        for pid in "${pids[@]}"; do
            kill -0 "${pid}" 2>/dev/null && running+=("${pid}")
        done
        pids=("${running[@]}")
        [ "${#pids[@]}" -eq 0 ] && return 0
        sleep 0.1
    done
    kill -9 "${pids[@]}" 2>/dev/null || true
}

start() {
    [ "$(id -u)" = "0" ] || missing "needs root (slurmd runs jobs as their users)"
    local binary
    for binary in munged slurmctld slurmd sbatch squeue sinfo; do
        command -v "${binary}" >/dev/null 2>&1 || PATH="${PATH}:/usr/sbin:/sbin" command -v "${binary}" >/dev/null 2>&1 \
            || missing "${binary} not found (Debian/Ubuntu: apt-get install slurm-wlm munge)"
    done
    id munge >/dev/null 2>&1 || missing "no munge user (the munge package creates it)"
    export PATH="${PATH}:/usr/sbin:/sbin"

    # munged refuses a socket directory that not everyone can search, and a key others can read
    mkdir -p "${dir}/state" "${dir}/spool" "${dir}/log"
    local munge_dir
    munge_dir="$(mktemp -d /tmp/bhive-munge.XXXXXXXX)"
    echo "${munge_dir}" >"${munge_record}"
    chown munge:munge "${munge_dir}"
    chmod 755 "${munge_dir}"
    head -c 1024 /dev/urandom >"${munge_dir}/munge.key"
    chown munge:munge "${munge_dir}/munge.key"
    chmod 400 "${munge_dir}/munge.key"
    runuser -u munge -- munged --key-file="${munge_dir}/munge.key" --socket="${munge_dir}/munge.socket" \
        --pid-file="${munge_dir}/munged.pid" --log-file="${munge_dir}/munged.log" \
        --seed-file="${munge_dir}/munged.seed"

    local host cpus memory
    host="$(hostname)"
    cpus="$(nproc)"
    memory="$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)"
    cat >"${conf}" <<EOF
ClusterName=bhive-test
SlurmctldHost=${host}
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${munge_dir}/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# a job that names no memory must not take the whole node's
DefMemPerCPU=1024
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# finished jobs stay visible to squeue (there is no accounting database for sacct)
MinJobAge=3600
StateSaveLocation=${dir}/state
SlurmdSpoolDir=${dir}/spool
SlurmctldPidFile=${dir}/slurmctld.pid
SlurmdPidFile=${dir}/slurmd.pid
SlurmctldLogFile=${dir}/log/slurmctld.log
SlurmdLogFile=${dir}/log/slurmd.log
NodeName=${host} CPUs=${cpus} RealMemory=${memory} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="${conf}"
    slurmctld -f "${conf}"
    slurmd -f "${conf}"

    local state=""
    for _ in $(seq 100); do
        state="$(sinfo --noheader --format=%t 2>/dev/null | head -n 1 || true)"
        [ "${state}" = "idle" ] && break
        sleep 0.2
    done
    if [ "${state}" != "idle" ]; then
        echo "slurm.sh: the node did not become idle (state '${state}'); logs in ${dir}/log" >&2
        stop
        exit 1
    fi
    echo "SLURM_CONF=${conf}"
}

stop() {
    local munge_dir=""
    [ -f "${munge_record}" ] && munge_dir="$(cat "${munge_record}")"
    stop_pid_files "${dir}/slurmd.pid:slurmd" "${dir}/slurmctld.pid:slurmctld" \
        ${munge_dir:+"${munge_dir}/munged.pid:munged"}
    case "${munge_dir}" in
        /tmp/bhive-munge.*) rm -rf "${munge_dir}" ;;
    esac
    rm -f "${munge_record}"
}

case "${action}" in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
