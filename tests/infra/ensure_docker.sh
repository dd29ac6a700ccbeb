#!/usr/bin/env bash
# Make sure a Docker engine answers, for the tests, the demo and the benchmarks.
# On Debian as root: install docker.io (and busybox-static, for the test image) if missing and
# start dockerd in the background. Anywhere else: say what is missing and fail.
set -euo pipefail

log=${UICI_DOCKERD_LOG:-/tmp/uici-dockerd.log}

engine_answers() { docker info >/dev/null 2>&1; }

need_packages=()
command -v dockerd >/dev/null 2>&1 || need_packages+=(docker.io)
command -v docker >/dev/null 2>&1 || need_packages+=(docker.io)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || need_packages+=(busybox-static)

if [ ${#need_packages[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "ensure_docker: missing ${need_packages[*]}; install them (Debian: apt-get install ${need_packages[*]})" >&2
        exit 1
    fi
    echo "ensure_docker: installing ${need_packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need_packages[@]}" >/dev/null
fi

if engine_answers; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_docker: no Docker engine answers 'docker info' and this is not root, so one cannot be started here." >&2
    echo "  Start Docker, or set DOCKER_HOST to a reachable engine, or add your user to the docker group." >&2
    exit 1
fi

if [ -n "${DOCKER_HOST:-}" ] && [[ "$DOCKER_HOST" != unix:///var/run/docker.sock ]]; then
    echo "ensure_docker: DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local engine for it." >&2
    exit 1
fi

echo "ensure_docker: starting dockerd in the background (log: $log)"
# No systemd on these machines: dockerd runs as a plain background process.
nohup dockerd >"$log" 2>&1 &
for _ in $(seq 1 60); do
    if engine_answers; then
        echo "ensure_docker: engine ready ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
        exit 0
    fi
    sleep 1
done
echo "ensure_docker: dockerd did not answer within 60 s; its log ($log) ends with:" >&2
tail -n 20 "$log" >&2 || true
exit 1
