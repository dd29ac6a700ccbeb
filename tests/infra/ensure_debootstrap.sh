#!/usr/bin/env bash
# A real Debian base image without a registry, for the image test (tests/test_image.py) and
# for deployments/docker/build.sh here:
#
#   tests/infra/ensure_debootstrap.sh [IMAGE]     (default uici-test/debian-python:bookworm)
#
# Installs debootstrap if missing (Debian, as root), then, unless IMAGE exists already, makes a
# minimal bookworm root filesystem with python3 (3.11), python3-venv and ca-certificates from
# the Debian mirror apt uses here (UICI_DEBIAN_MIRROR overrides it) and `docker import`s it.
# About a minute and 300 MB the first time; nothing afterwards. Exit 3: cannot be done here
# (not root, not Debian); the message says why.
set -euo pipefail

image=${1:-uici-test/debian-python:bookworm}
suite=${UICI_DEBIAN_SUITE:-bookworm}
docker=${DOCKER:-docker}

if "$docker" image inspect "$image" >/dev/null 2>&1; then
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "ensure_debootstrap: debootstrap is missing and this is not root on Debian;" \
            "install it (apt-get install debootstrap) or provide the image $image" >&2
        exit 3
    fi
    echo "ensure_debootstrap: installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends debootstrap >/dev/null
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_debootstrap: debootstrap needs root (chroot, device nodes); run as root or" \
        "provide the image $image" >&2
    exit 3
fi

# The mirror apt already uses for the suite: deb822 stanzas (*.sources) or one-line entries.
mirror=${UICI_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v suite="$suite" '
        /^[[:space:]]*$/ { if (uris != "" && hit) { print uris; exit } uris = ""; hit = 0; next }
        /^URIs:/ { uris = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) hit = 1 }
        END { if (uris != "" && hit) print uris }' | head -n 1)
fi
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2; exit }' | grep -v '^\[' || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

rootfs=$(mktemp -d /tmp/uici-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
log=${UICI_DEBOOTSTRAP_LOG:-/tmp/uici-debootstrap.log}
echo "ensure_debootstrap: debootstrap $suite from $mirror into $rootfs (log: $log)"
started=$(date +%s)
if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$rootfs" "$mirror" >"$log" 2>&1; then
    echo "ensure_debootstrap: debootstrap failed; its log ($log) ends with:" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
# No package lists or downloaded .debs in the image.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | "$docker" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --change 'LABEL uici-test.base=debootstrap' \
    --message "debootstrap --variant=minbase $suite + python3 python3-venv ca-certificates" \
    - "$image" >/dev/null
echo "ensure_debootstrap: $image ready in $(( $(date +%s) - started )) s:" \
    "$("$docker" run --rm --network none "$image" python3 --version)"
