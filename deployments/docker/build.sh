#!/usr/bin/env bash
# Build UICI's image (deployments/docker/Dockerfile) where the build cannot reach the package
# index: the wheels are made once into .uici/wheelhouse, then the image installs from them only.
#
#   deployments/docker/build.sh [--base IMAGE] [--tag NAME:TAG] [DOCKER-BUILD-OPTIONS...]
#
#   --base   the base image, build argument BASE_IMAGE (default $BASE_IMAGE, else
#            python:3.11-slim): python3 3.11+ with venv. When the default cannot be pulled
#            (no registry, as here), the local Debian base uici-test/debian-python:bookworm,
#            made by tests/infra/ensure_debootstrap.sh if missing.
#   --tag    default $UICI_IMAGE, else uici:<version in pyproject.toml>
#   anything else goes to `docker build` (e.g. --label k=v, --no-cache).
#
# 1. The wheelhouse, .uici/wheelhouse (git-ignored): `pip wheel` of pyproject.toml's
#    dependencies and build requirements, constrained to .venv's versions (the image runs what
#    the tests ran), made by the base image's own python3 in a throwaway container. Made again
#    only when pyproject.toml, .venv's versions or the base image change.
# 2. The context: exactly the files the image is built from, as a tar on standard input (the
#    legacy builder, which ignores Dockerfile.dockerignore, gets no .venv or .git either).
# 3. docker build -f deployments/docker/Dockerfile --build-arg BASE_IMAGE=... -t TAG -
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

python=${UICI_PYTHON:-$root/.venv/bin/python}
docker=${DOCKER:-docker}
base=${BASE_IMAGE:-python:3.11-slim}
base_given=${BASE_IMAGE:-}
tag=${UICI_IMAGE:-}
build_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --base) base=$2; base_given=$2; shift 2 ;;
        --base=*) base=${1#--base=}; base_given=$base; shift ;;
        --tag) tag=$2; shift 2 ;;
        --tag=*) tag=${1#--tag=}; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) build_args+=("$1"); shift ;;
    esac
done

if [ ! -x "$python" ]; then
    echo "build: no Python at $python; run 'make install' (or set UICI_PYTHON)" >&2
    exit 1
fi
version=$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
tag=${tag:-uici:$version}

# The base image: local, or pulled. Without a registry and without --base/BASE_IMAGE, the
# local Debian base of tests/infra/ensure_debootstrap.sh (made if missing, on Debian as root).
local_base=uici-test/debian-python:bookworm
if ! "$docker" image inspect "$base" >/dev/null 2>&1 && ! "$docker" pull -q "$base" >/dev/null; then
    if [ -n "$base_given" ]; then
        echo "build: the base image $base is neither here nor pullable; without a registry" \
            "make one: tests/infra/ensure_debootstrap.sh $local_base" >&2
        exit 1
    fi
    echo "build: $base cannot be pulled; building on the local Debian base $local_base instead"
    "$root/tests/infra/ensure_debootstrap.sh" "$local_base"
    base=$local_base
fi
base_id=$("$docker" image inspect --format '{{.Id}}' "$base")

# --- 1. the wheelhouse ---------------------------------------------------------------------
# Made by the base image's python3, not the host's: environment markers (e.g. redis needs
# async-timeout on python_full_version < "3.11.3") must be the image's. The throwaway
# container gets the host's pip cache and the CA bundle the host's pip trusts (pip config
# `cert`), both mounted; nothing of them ends up in an image.
wheelhouse=$root/.uici/wheelhouse
mkdir -p "$root/.uici"
inputs=$(mktemp -d)
trap 'rm -rf "$inputs"' EXIT
"$python" -c '
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))
lines = project["project"]["dependencies"] + project["build-system"]["requires"]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
' "$inputs/requirements.txt"
# .venv's versions, which the tests ran with (its dev tools too: a constraint only bounds what
# is required anyway).
"$python" -m pip freeze --exclude-editable 2>/dev/null | grep -v '^-e ' >"$inputs/constraints.txt" || true
key=$( { cat "$inputs/requirements.txt" "$inputs/constraints.txt"; echo "base $base_id"; } \
    | sha256sum | cut -d' ' -f1)
if [ "$(cat "$wheelhouse/.key" 2>/dev/null)" != "$key" ]; then
    echo "build: making the wheelhouse $wheelhouse with the python3 of $base" \
        "(pyproject.toml, .venv or the base changed)"
    started=$(date +%s)
    cache=${PIP_CACHE_DIR:-$("$python" -m pip cache dir 2>/dev/null || echo "$root/.uici/pip-cache")}
    mkdir -p "$cache"
    pip_env=(-e HOME=/tmp -e PIP_CACHE_DIR=/pip-cache -e PIP_DISABLE_PIP_VERSION_CHECK=1
        -e "PIP_DEFAULT_TIMEOUT=${PIP_DEFAULT_TIMEOUT:-60}")
    mounts=(-v "$inputs:/inputs:ro" -v "$cache:/pip-cache" -v "$root/.uici:/out")
    cert=${PIP_CERT:-$("$python" -m pip config get global.cert 2>/dev/null || true)}
    if [ -n "$cert" ] && [ -f "$cert" ]; then
        mounts+=(-v "$(readlink -f "$cert"):/run/uici-ca.crt:ro")
        pip_env+=(-e PIP_CERT=/run/uici-ca.crt)
    fi
    index=${PIP_INDEX_URL:-$("$python" -m pip config get global.index-url 2>/dev/null || true)}
    if [ -n "$index" ]; then pip_env+=(-e "PIP_INDEX_URL=$index"); fi
    rm -rf "$wheelhouse.tmp"
    "$docker" run --rm --label uici.build=wheelhouse --user "$(id -u):$(id -g)" \
        "${pip_env[@]}" "${mounts[@]}" --entrypoint sh "$base" -c '
            set -e
            python3 -m venv /tmp/venv
            /tmp/venv/bin/pip wheel --quiet --wheel-dir /out/wheelhouse.tmp \
                --requirement /inputs/requirements.txt --constraint /inputs/constraints.txt'
    cp "$inputs/requirements.txt" "$inputs/constraints.txt" "$wheelhouse.tmp/"
    echo "$key" >"$wheelhouse.tmp/.key"
    rm -rf "$wheelhouse"
    mv "$wheelhouse.tmp" "$wheelhouse"
    echo "build: $(ls "$wheelhouse"/*.whl | wc -l) wheels, $(du -sh "$wheelhouse" | cut -f1)," \
        "in $(( $(date +%s) - started )) s"
else
    echo "build: reusing the wheelhouse $wheelhouse ($(ls "$wheelhouse"/*.whl | wc -l) wheels)"
fi

# --- 2. and 3. the context and the build -----------------------------------------------------
# The files Dockerfile.dockerignore lets through, and nothing else.
context=(pyproject.toml README.md prefect.yaml infrastructure agent flows tasks
    deployments/docker/Dockerfile deployments/docker/Dockerfile.dockerignore .uici/wheelhouse)
echo "build: $tag from $base ($docker build)"
started=$(date +%s)
tar -C "$root" -c --exclude=__pycache__ --exclude='*.pyc' --exclude=.key "${context[@]}" \
    | "$docker" build -f deployments/docker/Dockerfile --build-arg "BASE_IMAGE=$base" \
        --label "org.opencontainers.image.version=$version" -t "$tag" --force-rm \
        ${build_args[@]+"${build_args[@]}"} -
echo "build: $tag built in $(( $(date +%s) - started )) s," \
    "$("$docker" image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1 / 1e6}')"
