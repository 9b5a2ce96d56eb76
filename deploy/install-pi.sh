#!/usr/bin/env bash
# Install or upgrade edgeface as a systemd service on Raspberry Pi OS bookworm, 64-bit (aarch64),
# Python 3.11 (the system python3). Pi 4 and Pi 5. See deploy/README.md.
#
#   sudo deploy/install-pi.sh [--source 0] [--mqtt-url mqtt://edgeface@broker.lan] \
#        [--mqtt-password-file pw.txt] [--libcamera] [--package edgeface==X.Y]
#
# Run again to upgrade: a new venv is built beside the active one, the gallery is backed up, and
# the venv symlink is swapped in one rename (code and models change together; rollback printed).
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF2'
usage: sudo deploy/install-pi.sh [options]
EOF2
    usage_common
    cat <<'EOF2'
  --libcamera           also install libcamera's V4L2 compatibility layer for a CSI camera module
                        (the service then runs under libcamerify; see deploy/README.md)
EOF2
}

parse_common_args "$@"
LIBCAMERA=0
for extra in "${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}"; do
    case "$extra" in
        --libcamera) LIBCAMERA=1 ;;
        *) usage >&2; die "unknown option $extra" ;;
    esac
done
require_root

. /etc/os-release
[ "${VERSION_CODENAME:-}" = bookworm ] || say "warning: this is ${PRETTY_NAME:-an unknown OS}; the installer targets Raspberry Pi OS bookworm"
[ "$(uname -m)" = aarch64 ] || say "warning: $(uname -m), not aarch64: use the 64-bit Raspberry Pi OS (no aarch64 wheels for armv7l)"

say "installing system packages"
packages=(python3 python3-venv python3-pip v4l-utils)
[ "$LIBCAMERA" = 1 ] && packages+=(libcamera-v4l2 libcamera-tools)
apt-get install -y --no-install-recommends "${packages[@]}" >/dev/null
check_python python3 3.11

create_user video
install_venv python3
backup_gallery
switch_venv
write_config
drop_ins=()
[ "$LIBCAMERA" = 1 ] && drop_ins+=("$REPO/systemd/libcamera.conf")
install_unit "${drop_ins[@]+"${drop_ins[@]}"}"
run_doctor
say "done: systemctl status edgeface; journalctl -u edgeface -f"
