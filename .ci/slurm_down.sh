#!/usr/bin/env bash
# Stop the daemons .ci/slurm_up.sh started, by their PID files (slurmd first, munged last).
D=${LMDELTA_SLURM_DIR:-/tmp/lmdelta-slurm}
for f in "$D/run/slurmd.pid" "$D/run/slurmctld.pid" "$D/run/slurmdbd.pid" /run/mysqld/mysqld.pid /run/munge/munged.pid; do
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
done
