#!/usr/bin/env bash
# Install or upgrade edgeface as a systemd service on NVIDIA Jetson with JetPack 6 (Ubuntu 22.04,
# aarch64, Python 3.10). See deploy/README.md.
#
#   sudo deploy/install-jetson.sh [--ort-gpu-wheel FILE|URL] [--source 0] [--mqtt-url ...] ...
#
# onnxruntime-gpu for JetPack 6 is not on PyPI: NVIDIA publishes it (Jetson AI Lab / Jetson Zoo).
# With --ort-gpu-wheel it replaces the CPU onnxruntime in the venv, and edgeface then uses the
# TensorRT and CUDA execution providers automatically (edgeface/runtime/onnx.py prefers them);
# without it, everything runs on the CPU cores. `edgeface doctor` lists the providers it found.
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF2'
usage: sudo deploy/install-jetson.sh [options]
EOF2
    usage_common
    cat <<'EOF2'
  --ort-gpu-wheel W     onnxruntime-gpu wheel for JetPack 6 / cp310 (a file or a URL from NVIDIA)
EOF2
}

parse_common_args "$@"
ORT_GPU_WHEEL=""
set -- "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}"
while [ $# -gt 0 ]; do
    case "$1" in
        --ort-gpu-wheel) ORT_GPU_WHEEL=${2:?--ort-gpu-wheel needs a value}; shift 2 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done
require_root

if [ -r /etc/nv_tegra_release ]; then
    say "$(head -n 1 /etc/nv_tegra_release)"
else
    say "warning: /etc/nv_tegra_release not found: is this a Jetson with JetPack 6?"
fi

say "installing system packages"
apt-get install -y --no-install-recommends python3 python3-venv python3-pip v4l-utils >/dev/null
check_python python3 3.10

create_user video render
install_venv python3
if [ -n "$ORT_GPU_WHEEL" ]; then
    say "replacing onnxruntime (CPU) with $ORT_GPU_WHEEL"
    "$NEW_VENV/bin/pip" uninstall --quiet -y onnxruntime
    "$NEW_VENV/bin/pip" install --quiet "$ORT_GPU_WHEEL"
    "$NEW_VENV/bin/python" -c 'import onnxruntime as o; p = o.get_available_providers(); print("providers:", ", ".join(p)); raise SystemExit(0 if "CUDAExecutionProvider" in p else 1)' \
        || die "the onnxruntime-gpu wheel offers no CUDA provider (JetPack/CUDA version mismatch?); nothing was switched"
else
    say "no --ort-gpu-wheel: onnxruntime runs on the CPU (give the JetPack 6 onnxruntime-gpu wheel to use the GPU)"
fi
backup_gallery
switch_venv
write_config
install_unit "$REPO/systemd/jetson.conf"
run_doctor
say "done: systemctl status edgeface; journalctl -u edgeface -f"
