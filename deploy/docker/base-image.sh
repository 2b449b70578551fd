#!/usr/bin/env bash
# The base image of the container recipe (bentofile.yaml's docker.base_image), from Debian
# packages and the CPU torch wheel: no image registry is reachable here (no `FROM python:3.11`),
# and PyPI's torch is the multi-GB CUDA build.
#   backstory-debian:bookworm  a minimal Debian 12 by debootstrap (its python3 is 3.11, as the
#                              wheel's cp311), made into an image with `docker import`;
#   backstory-base:bookworm    that, with the CPU build of requirements.txt's torch installed in
#                              /app/.venv (the venv the Bento's packages go into) and pinned there
#                              by /app/constraints.txt. The wheel is mounted, never in a layer.
# Each is built once and kept while it matches (`docker rmi` one to rebuild it). Needs root (for
# debootstrap) and a running Docker engine; `make container` and tests/test_container.py run it.
# PYTHON: the pip that fetches the wheel; it finds the CPU build where pip is configured to (here
# /opt/wheels; elsewhere e.g. PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEBIAN=backstory-debian:bookworm
BASE=backstory-base:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYTHON=${PYTHON:-.venv/bin/python}
TORCH=$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' requirements.txt)+cpu
if [ "$(docker image inspect -f '{{index .Config.Labels "torch"}}' "$BASE" 2>/dev/null)" \
        = "$TORCH" ]; then
    echo "$BASE: already built (torch $TORCH)"
    exit 0
fi
tmp=$(mktemp -d /tmp/backstory-image.XXXXXX)
trap 'rm -rf "$tmp"; docker rm -f "${tmp##*/}" >/dev/null 2>&1 || true' EXIT

if ! docker image inspect "$DEBIAN" >/dev/null 2>&1; then
    root=$tmp/rootfs
    # python3-venv: the venv; ca-certificates: pip's TLS; curl: checks by hand in the container.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,curl \
        bookworm "$root" "$MIRROR"
    # The image trusts what this machine trusts (a TLS-intercepting egress proxy's CA, where
    # there is one), or pip inside `docker build` cannot reach PyPI.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
        chroot "$root" update-ca-certificates >/dev/null
    fi
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
        "$root"/var/log/*.log
    tar -C "$root" --numeric-owner -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$DEBIAN"
    rm -rf "$root"
fi

# The exact CPU build for the image's Python and platform, never PyPI's CUDA one.
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --dest "$tmp/wheels" "torch==$TORCH"
# PIP_CERT: the system store (with this host's CAs, above), not pip's own bundle.
docker run --name "${tmp##*/}" --network host -v "$tmp/wheels:/wheels:ro" "$DEBIAN" sh -euc "
    python3.11 -m venv /app/.venv
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt /app/.venv/bin/pip install -q --no-cache-dir \
        /wheels/torch-*.whl
    echo 'torch==$TORCH' > /app/constraints.txt"
docker commit --change "LABEL torch=$TORCH" --change 'CMD ["/bin/bash"]' "${tmp##*/}" "$BASE" \
    >/dev/null
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^backstory-(debian|base)'
