#!/bin/bash
# The Ray head pod's entrypoint (RayCluster annotation ray.io/overwrite-container-cmd: "true").
#
# 1. Start Ray with the command KubeRay generated for this pod (KUBERAY_GEN_RAY_START_CMD,
#    from rayStartParams); KubeRay leaves the `ulimit` to us.
# 2. Once the GCS answers, start Kairos on it: `kairos start` joins as a driver, starts the
#    controller, the learner, the shards and a gateway on every Ray node alive now, and exits.
#    The store is $KAIROS_STORE, whose password every process that opens it (`kairos
#    start`, the controller, the learner, each shard) reads itself from the file
#    $KAIROS_STORE_PASSWORD_FILE names; the API keys are the file $KAIROS_API_KEYS_FILE
#    (`--keys`): Secrets mounted as files, which this script never reads, so that no secret
#    is in the container's environment or on a command line (any process's argv); a catalog
#    from the optional ConfigMap; with $KAIROS_SHARD_ENDPOINT_PORTS (LOW-HIGH), every shard
#    serves its own endpoint there.
# 3. Live as long as Ray does. If Kairos did not start, stop Ray and exit 1: the kubelet
#    restarts the container and Kairos is tried again on a fresh Ray (shards recover from the
#    store). SIGTERM (pod deletion) stops Ray, and a `kairos start` still running before it.
# Before 1, Ray's session directories of earlier containers are removed (prune_ray_sessions).
# Ray is stopped by signalling the `ray start --block` this script started, which stops the
# processes of this node only (`ray stop` would stop every Ray on the machine); the tests run
# this script as a process beside other Rays.
set -u

RAY_GCS="127.0.0.1:${RAY_GCS_PORT:-6379}"
CATALOG=/etc/kairos/catalog/catalog.yaml
GCS_WAIT_S=${KAIROS_GCS_WAIT_S:-300}

ulimit -n 65536

# Ray never removes its session directories, and the ray-logs emptyDir outlives a restarted
# container: in a crash loop they pile up until the volume's sizeLimit evicts the pod. The
# volume is sized for one session (k8s/README.md), so every earlier one goes, unless a running
# process names it (a Ray beside this one on a shared machine, as in tests/cluster/test_pods).
prune_ray_sessions() {
    local running session
    running=$(cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\0' ' ')
    for session in "${RAY_TMPDIR:-${TMPDIR:-/tmp}}"/ray/session_2*/; do
        [ -d "$session" ] || continue  # no match: the pattern itself
        session=${session%/}
        [[ $running == *"${session##*/}"* ]] || rm -rf -- "$session"
    done
}

stop_ray() {
    echo "kairos-head: stopping Ray" >&2
    # waited for only if it was there (see stop_kairos)
    if kill -TERM "$ray_pid" 2>/dev/null; then
        wait "$ray_pid" 2>/dev/null || true
    fi
}
# A `kairos start` still running (its driver exits on SIGTERM, after ray.shutdown) gets 10 s,
# so that Ray's own drain and stop still fit the head's grace period after it.
# shellcheck disable=SC2329  # the trap calls it
stop_kairos() {
    [ -n "$kairos_pid" ] || return 0
    echo "kairos-head: stopping kairos start" >&2
    kill -TERM "$kairos_pid" 2>/dev/null
    for _ in {1..10}; do
        kill -0 "$kairos_pid" 2>/dev/null || break
        sleep 1
    done
    # Waited for only if it was still there: bash's `wait` for a child it has already reaped
    # can block for good inside a trap that interrupted a `wait` for that child
    if kill -0 "$kairos_pid" 2>/dev/null; then
        kill -KILL "$kairos_pid" 2>/dev/null
        wait "$kairos_pid" 2>/dev/null || true
    fi
}
ray_pid=""
kairos_pid=""
trap 'stop_kairos; stop_ray; exit 0' TERM INT

prune_ray_sessions

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
if [ -n "${KAIROS_API_KEYS_FILE:-}" ]; then
    args+=(--keys "$KAIROS_API_KEYS_FILE")
fi
# Plaintext gRPC off loopback only when the manifests say so (API keys cross the pod network
# in clear): `kairos start` refuses it otherwise
if [ "${KAIROS_INSECURE:-}" = 1 ]; then
    args+=(--insecure)
fi
# In the background, waited for: bash runs a trap only once the foreground command returns,
# and a start that recovers shards takes up to 16 minutes, past the pod's grace period. A
# SIGTERM interrupts `wait` instead, and the trap stops this start and Ray.
kairos "${args[@]}" &
kairos_pid=$!
wait "$kairos_pid"
started=$?
kairos_pid=""
if [ "$started" -ne 0 ]; then
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
