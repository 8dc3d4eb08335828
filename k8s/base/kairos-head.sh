#!/bin/bash
# The Ray head pod's entrypoint (RayCluster annotation ray.io/overwrite-container-cmd: "true").
#
# 1. Start Ray with the command KubeRay generated for this pod (KUBERAY_GEN_RAY_START_CMD,
#    from rayStartParams); KubeRay leaves the `ulimit` to us.
# 2. Once the GCS answers, start Kairos on it: `kairos start` joins as a driver, starts the
#    controller, the learner, the shards and a gateway on every Ray node alive now, and exits.
#    The store comes from $KAIROS_STORE, the API keys from $KAIROS_API_KEYS (both set in the
#    pod spec from Secrets, never on a command line); a catalog from the optional ConfigMap;
#    with $KAIROS_SHARD_ENDPOINT_PORTS (LOW-HIGH), every shard serves its own endpoint there.
# 3. Live as long as Ray does. If Kairos did not start, stop Ray and exit 1: the kubelet
#    restarts the container and Kairos is tried again on a fresh Ray (shards recover from the
#    store). SIGTERM (pod deletion) stops Ray.
# Ray is stopped by signalling the `ray start --block` this script started, which stops the
# processes of this node only (`ray stop` would stop every Ray on the machine); the tests run
# this script as a process beside other Rays.
set -u

RAY_GCS="127.0.0.1:${RAY_GCS_PORT:-6379}"
CATALOG=/etc/kairos/catalog/catalog.yaml
GCS_WAIT_S=${KAIROS_GCS_WAIT_S:-300}

ulimit -n 65536

stop_ray() {
    echo "kairos-head: stopping Ray" >&2
    kill -TERM "$ray_pid" 2>/dev/null
    wait "$ray_pid" 2>/dev/null || true
}
ray_pid=""
trap 'stop_ray; exit 0' TERM INT

# KubeRay's generated command is a shell command line (it may quote values): eval keeps its
# quoting, and exec makes $ray_pid the `ray start` itself. It blocks (--block) while the
# node runs.
eval "exec $KUBERAY_GEN_RAY_START_CMD" &
ray_pid=$!

waited=0
until ray health-check --address "$RAY_GCS" >/dev/null 2>&1; do
    if ! kill -0 "$ray_pid" 2>/dev/null && ! ray health-check --address "$RAY_GCS" >/dev/null 2>&1; then
        wait "$ray_pid"
        echo "kairos-head: ray start exited with $? before the GCS answered" >&2
        exit 1
    fi
    if [ "$waited" -ge "$GCS_WAIT_S" ]; then
        echo "kairos-head: the GCS at $RAY_GCS did not answer in ${GCS_WAIT_S} s" >&2
        stop_ray
        exit 1
    fi
    sleep 2
    waited=$((waited + 2))
done

args=(start --address "$RAY_GCS" --host "${KAIROS_GATEWAY_HOST:-0.0.0.0}"
      --port "${KAIROS_GATEWAY_PORT:-50051}"
      --shards "${KAIROS_SHARDS:-4}")
if [ -f "$CATALOG" ]; then
    args+=(--catalog "$CATALOG")
fi
if [ -n "${KAIROS_SHARD_ENDPOINT_PORTS:-}" ]; then  # components/shard-endpoints
    args+=(--shard-endpoint-ports "$KAIROS_SHARD_ENDPOINT_PORTS")
fi
if ! kairos "${args[@]}"; then
    echo "kairos-head: kairos start failed; stopping Ray so that the container restarts" >&2
    stop_ray
    exit 1
fi

# `wait` returns early on a trapped signal, which then runs the trap.
if kill -0 "$ray_pid" 2>/dev/null; then
    wait "$ray_pid"
    status=$?
    echo "kairos-head: Ray exited with $status" >&2
    exit "$status"
fi
while ray health-check --address "$RAY_GCS" >/dev/null 2>&1; do
    sleep 10 &
    wait $!
done
echo "kairos-head: the GCS at $RAY_GCS stopped answering" >&2
exit 1
