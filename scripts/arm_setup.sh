#!/usr/bin/env bash
# Build (once) an emulated aarch64 Python with onnxruntime + NumPy for tests/test_arm.py.
#
#   scripts/arm_setup.sh            # idempotent; a second run returns at once
#
# Result, under ${EDGEPRUNE_ARM_CACHE:-~/.cache/edgeprune/arm64}:
#   root/    arm64 Debian bookworm (minbase + python3.11), unpacked with dpkg-deb -x
#   site/    aarch64 wheels of onnxruntime and numpy (pip --target)
#   ready    stamp file, written last; its presence means the environment works
#   failed   the reason of the last failed attempt (removed on success)
#
# It never fails the caller: without root, unshare, apt or a mirror it prints why, records the
# reason in `failed` and exits 0, and tests/test_arm.py then skips with that reason.
# Overrides: EDGEPRUNE_ARM_CACHE, EDGEPRUNE_ARM_CPUINFO, EDGEPRUNE_ARM_MIRROR, EDGEPRUNE_ARM_DEADLINE,
# PYTHON (whose pip fetches the aarch64 wheels).
# Steps and the cpuinfo trick: see shared/ENVIRONMENT.md, "aarch64 onnxruntime under emulation".
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${EDGEPRUNE_ARM_CACHE:-$HOME/.cache/edgeprune/arm64}"
CPUINFO="${EDGEPRUNE_ARM_CPUINFO:-$REPO/../shared/arm/cpuinfo-aarch64-neoverse-n1}"
PYTHON="${PYTHON:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3)}"
SUITE=bookworm
DEADLINE="${EDGEPRUNE_ARM_DEADLINE:-240}"   # seconds for the whole setup (about 60 s when it works)

WORK="$CACHE.partial"          # built aside, renamed into place only when it works
give_up() {  # record the reason, tell the caller, succeed anyway
    rm -rf "$WORK"
    mkdir -p "$CACHE" && echo "$*" > "$CACHE/failed"
    echo "arm_setup: skipped: $*" >&2
    exit 0
}

within_deadline() {  # run "$@" with what is left of the time budget
    local left=$((DEADLINE - SECONDS))
    [ "$left" -gt 0 ] || give_up "ran out of its ${DEADLINE} s budget before $1"
    timeout "$left" "$@"
    local rc=$?
    [ "$rc" -ne 124 ] || give_up "$1 ran past the ${DEADLINE} s budget (slow or unreachable mirror?)"
    return "$rc"
}

add_ncnn() {  # optional: aarch64 ncnn beside onnxruntime for tests/test_arm.py's runtime check
    [ -d "$1/ncnn" ] && return 0
    timeout 120 "$PYTHON" -m pip install -q --target "$1" --platform manylinux_2_28_aarch64 --python-version 3.11 \
        --implementation cp --only-binary=:all: --no-deps ncnn >/dev/null 2>&1 \
        && echo "arm_setup: aarch64 ncnn added" || echo "arm_setup: no aarch64 ncnn (its ARM check will skip)"
}

if [ -f "$CACHE/ready" ]; then
    add_ncnn "$CACHE/site"
    echo "arm_setup: ready at $CACHE ($(cat "$CACHE/ready"))"
    exit 0
fi
[ "$(id -u)" = 0 ] || give_up "needs root (apt-get, debootstrap, mount --bind)"
command -v unshare >/dev/null || give_up "no unshare command"
[ -f "$CPUINFO" ] || give_up "no aarch64 cpuinfo file at $CPUINFO"
unshare -m true 2>/dev/null || give_up "unshare -m is not permitted here"

if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
    echo "arm_setup: installing qemu-user-static debootstrap"
    within_deadline apt-get update -qq >/dev/null 2>&1 || give_up "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive within_deadline \
        apt-get install -y -qq --no-install-recommends qemu-user-static debootstrap >/dev/null 2>&1 \
        || give_up "apt-get install qemu-user-static debootstrap failed"
fi

# The mirror is debootstrap's own default unless EDGEPRUNE_ARM_MIRROR names one.
MIRROR="${EDGEPRUNE_ARM_MIRROR:-}"

rm -rf "$WORK" && mkdir -p "$WORK" || give_up "cannot write $WORK"
echo "arm_setup: debootstrap $SUITE arm64 from ${MIRROR:-the default mirror of debootstrap}"
within_deadline debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 \
    "$SUITE" "$WORK/root" ${MIRROR:+"$MIRROR"} >"$WORK/debootstrap.log" 2>&1 \
    || give_up "debootstrap failed (mirror ${MIRROR:-default}): $(tail -n1 "$WORK/debootstrap.log")"
for deb in "$WORK"/root/var/cache/apt/archives/*.deb; do
    dpkg-deb -x "$deb" "$WORK/root" || give_up "dpkg-deb -x $deb failed"
done
rm -f "$WORK"/root/var/cache/apt/archives/*.deb
[ -x "$WORK/root/usr/bin/python3.11" ] || give_up "the arm64 root has no python3.11"

# Same onnxruntime version as the host when the registry has it for aarch64.
ORT_VERSION="$("$PYTHON" -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null)"
pip_aarch64() {
    within_deadline "$PYTHON" -m pip install -q --target "$WORK/site" \
        --platform manylinux_2_28_aarch64 --python-version 3.11 --implementation cp \
        --only-binary=:all: "$@" >"$WORK/pip.log" 2>&1
}
echo "arm_setup: pip install aarch64 onnxruntime${ORT_VERSION:+==$ORT_VERSION} numpy"
pip_aarch64 ${ORT_VERSION:+"onnxruntime==$ORT_VERSION"} numpy || pip_aarch64 onnxruntime numpy \
    || give_up "pip could not fetch aarch64 onnxruntime/numpy: $(tail -n1 "$WORK/pip.log")"

add_ncnn "$WORK/site"

# Smoke test: the emulated interpreter imports onnxruntime (needs the aarch64 cpuinfo).
VERSIONS="$(unshare -m sh -c 'mount --bind "$1" /proc/cpuinfo && PYTHONPATH="$2" exec \
    qemu-aarch64-static -L "$3" "$3/usr/bin/python3.11" -c \
    "import platform, numpy, onnxruntime as o; print(platform.machine(), \"onnxruntime\", o.__version__, \"numpy\", numpy.__version__)"' \
    sh "$CPUINFO" "$WORK/site" "$WORK/root" 2>"$WORK/smoke.log")" \
    || give_up "emulated python could not import onnxruntime: $(tail -n1 "$WORK/smoke.log")"

rm -f "$CACHE/failed"; rmdir "$CACHE" 2>/dev/null  # only a `failed` note can be there
mv -T "$WORK" "$CACHE" || give_up "cannot move $WORK to $CACHE (remove $CACHE first)"
echo "$VERSIONS" > "$CACHE/ready"
echo "arm_setup: ready at $CACHE ($VERSIONS) in ${SECONDS} s"
