#!/bin/sh
# Pin this container's worker to one GPU, then run the given command.
#
# Why: `docker compose up --scale gpu-worker=N` starts N identical containers
# that all see every GPU of the host (Compose cannot hand replica i GPU i).
# Each replica therefore claims the first free GPU by taking an exclusive
# lock file on a volume shared by the replicas of this host; the kernel
# drops the lock when the process exits, so a restarted replica claims a GPU
# again. With one visible GPU (Kubernetes' device plugin, or an explicit
# NVIDIA_VISIBLE_DEVICES) there is nothing to choose and nothing is locked.
#
#   GPU_INDEX     use this GPU instead of claiming one
#   GPU_LOCK_DIR  where the lock files live (default /var/lock/anonymize-gpus)
set -eu

lock_dir="${GPU_LOCK_DIR:-/var/lock/anonymize-gpus}"

if [ -z "${CUDA_VISIBLE_DEVICES:-}" ]; then
    count=0
    if command -v nvidia-smi >/dev/null 2>&1; then
        count=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    fi
    if [ -n "${GPU_INDEX:-}" ]; then
        export CUDA_VISIBLE_DEVICES="$GPU_INDEX"
    elif [ "$count" -gt 1 ]; then
        mkdir -p "$lock_dir"
        i=0
        while [ "$i" -lt "$count" ]; do
            # fd 9 stays open across exec below: the worker holds the lock.
            exec 9>"$lock_dir/gpu-$i.lock"
            if flock -n 9; then
                export CUDA_VISIBLE_DEVICES="$i"
                break
            fi
            exec 9>&-
            i=$((i + 1))
        done
        if [ -z "${CUDA_VISIBLE_DEVICES:-}" ]; then
            echo "anonymize: error: all $count GPUs of this host already have a worker;" \
                 "scale gpu-worker to at most $count" >&2
            exit 1
        fi
    fi
fi
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    echo "anonymize: worker pinned to GPU ${CUDA_VISIBLE_DEVICES} (seen inside as cuda:0)" >&2
fi
exec "$@"
