#!/bin/sh
# Container health: this container's own Celery node answers a ping over the
# broker. A reply proves the worker's parent process is alive, its consumer
# loop is not wedged and the broker is reachable. A busy worker still
# answers: the prefork parent handles control messages while its pool child
# runs the batch.
#
# `anonymize worker` names its node QUEUES@HOST (gpu@host, cpu@host,
# gpu-cpu@host, see workers/main.py); all forms are asked, only the one that
# exists replies. CELERY_NODE_NAME overrides (for a worker started with
# --hostname).
set -eu
host="$(hostname)"
nodes="${CELERY_NODE_NAME:-gpu@$host,cpu@$host,gpu-cpu@$host,cpu-gpu@$host}"
exec celery -A tasks.app --config tasks.celeryconfig inspect ping --destination "$nodes" --timeout 10 >/dev/null
