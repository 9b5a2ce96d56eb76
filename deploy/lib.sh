# shellcheck shell=bash
# Shared steps of deploy/install-pi.sh and deploy/install-jetson.sh. Sourced, not run.
#
# Layout it creates:
#   /opt/edgeface/venv-<stamp>/   one virtual environment per install or upgrade (models are inside it)
#   /opt/edgeface/venv            symlink to the active one, swapped with one rename(2): an upgrade
#                                 replaces code and models atomically, and the old one stays for rollback
#   /etc/edgeface/edgeface.yaml   config (kept across upgrades)
#   /etc/edgeface/edgeface.env    EDGEFACE_SOURCE and EDGEFACE_RUN_ARGS for the unit (kept)
#   /etc/edgeface/mqtt_password   broker password, 0600 root (LoadCredential= hands it to the service)
#   /etc/edgeface/command_secret  signs MQTT commands, 0600 root, created once (LoadCredential= as well)
#   /var/lib/edgeface/            gallery.db, MQTT outbox, backups/ (StateDirectory=, 0700)

PREFIX=${PREFIX:-/opt/edgeface}
ETC=${ETC:-/etc/edgeface}
STATE=${STATE:-/var/lib/edgeface}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
SERVICE_USER=edgeface
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '==> %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

usage_common() {
    cat <<'EOF'
  --package SPEC        what to pip-install: a checkout, a wheel file or "edgeface==X.Y" (default: this checkout)
  --source SRC          camera index, /dev/videoN, rtsp://..., GStreamer pipeline or video file (default: 0)
  --mqtt-url URL        publish to this broker (mqtt://user@host:1883); default: events to the journal
  --mqtt-password-file FILE   broker password (first line); copied to /etc/edgeface/mqtt_password, 0600
  --no-start            install and enable, but do not (re)start the service
  -h, --help            this text
EOF
}

parse_common_args() {
    PACKAGE="$REPO"
    SOURCE_SPEC=0
    MQTT_URL=""
    MQTT_PASSWORD_FILE=""
    START=1
    EXTRA_ARGS=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --package) PACKAGE=${2:?--package needs a value}; shift 2 ;;
            --source) SOURCE_SPEC=${2:?--source needs a value}; shift 2 ;;
            --mqtt-url) MQTT_URL=${2:?--mqtt-url needs a value}; shift 2 ;;
            --mqtt-password-file) MQTT_PASSWORD_FILE=${2:?--mqtt-password-file needs a value}; shift 2 ;;
            --no-start) START=0; shift ;;
            -h|--help) usage; exit 0 ;;
            *) EXTRA_ARGS+=("$1"); shift ;;
        esac
    done
    if [ -n "$MQTT_PASSWORD_FILE" ] && [ ! -r "$MQTT_PASSWORD_FILE" ]; then
        die "cannot read the password file $MQTT_PASSWORD_FILE"
    fi
    case "$MQTT_URL" in
        ""|mqtt://*|mqtts://*) ;;
        *) die "--mqtt-url must start with mqtt:// or mqtts://, got $MQTT_URL" ;;
    esac
}

require_root() {
    [ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 ...)"
}

check_python() {  # check_python PYTHON MAJOR.MINOR
    command -v "$1" >/dev/null || die "$1 not found; install it with apt-get install $1 $1-venv"
    local version
    version=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$version" = "$2" ] || say "warning: $1 is Python $version; this installer is tested for $2"
    "$1" -c 'import venv, ensurepip' 2>/dev/null || die "$1 lacks venv/ensurepip; apt-get install python3-venv"
}

create_user() {
    if ! id "$SERVICE_USER" >/dev/null 2>&1; then
        say "creating system user $SERVICE_USER"
        useradd --system --user-group --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
    local group
    for group in "$@"; do
        if getent group "$group" >/dev/null; then usermod -aG "$group" "$SERVICE_USER"; fi
    done
}

# install_venv PYTHON [pip args...]: a fresh venv next to the active one; prints its path last.
install_venv() {
    local python=$1; shift
    local stamp venv
    stamp=$(date +%Y%m%d-%H%M%S)
    venv="$PREFIX/venv-$stamp"
    mkdir -p "$PREFIX"
    say "creating $venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    say "installing $PACKAGE (binary wheels only for the compiled dependencies)"
    "$venv/bin/pip" install --quiet --prefer-binary \
        --only-binary=numpy,opencv-python-headless,onnxruntime,ai-edge-litert,pydantic-core "$@" "$PACKAGE"
    say "checking the shipped models against their sha256"
    "$venv/bin/edgeface" models verify >/dev/null || die "model files in $venv are corrupted; nothing was switched"
    NEW_VENV=$venv
}

backup_gallery() {  # a consistent copy (SQLite online backup) before an upgrade may migrate it
    local gallery="$STATE/gallery.db"
    [ -f "$gallery" ] || return 0
    mkdir -p "$STATE/backups"
    local target
    target="$STATE/backups/gallery-$(date +%Y%m%d-%H%M%S).db"
    say "backing up the gallery to $target"
    "$NEW_VENV/bin/python" - "$gallery" "$target" <<'EOF'
import sqlite3, sys
source, target = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True), sqlite3.connect(sys.argv[2])
source.backup(target)
target.close(); source.close()
EOF
    chown -R "$SERVICE_USER:$SERVICE_USER" "$STATE/backups"
    chmod 0700 "$STATE/backups"
    chmod 0600 "$target"
}

switch_venv() {  # atomically point $PREFIX/venv at the new one; keep the previous one for rollback
    PREVIOUS_VENV=""
    if [ -L "$PREFIX/venv" ]; then PREVIOUS_VENV=$(readlink -f "$PREFIX/venv"); fi
    ln -sfn "$NEW_VENV" "$PREFIX/venv.new"
    mv -T "$PREFIX/venv.new" "$PREFIX/venv"
    say "active: $NEW_VENV"
    if [ -n "$PREVIOUS_VENV" ]; then
        say "rollback: sudo ln -sfn $PREVIOUS_VENV $PREFIX/venv.new && sudo mv -T $PREFIX/venv.new $PREFIX/venv" \
            "&& sudo systemctl restart edgeface (and restore the gallery backup if its schema was upgraded)"
    fi
}

write_config() {
    install -d -m 0755 "$ETC"
    if [ ! -f "$ETC/edgeface.yaml" ]; then
        install -m 0644 "$REPO/deploy/edgeface.example.yaml" "$ETC/edgeface.yaml"
        say "wrote $ETC/edgeface.yaml (edit station_id and the rest there)"
    fi
    local run_args=""
    [ -n "$MQTT_URL" ] && run_args="--sink mqtt --mqtt-url $MQTT_URL"
    if [ ! -f "$ETC/edgeface.env" ]; then
        (umask 077 && printf '# Read by edgeface.service (EnvironmentFile=).\nEDGEFACE_SOURCE=%s\nEDGEFACE_RUN_ARGS=%s\n' \
            "$SOURCE_SPEC" "$run_args" >"$ETC/edgeface.env")
        say "wrote $ETC/edgeface.env (source ${SOURCE_SPEC%%://*}${MQTT_URL:+, broker $MQTT_URL})"
    fi
    chmod 0600 "$ETC/edgeface.env"  # the source may carry a camera password
    if [ ! -f "$ETC/command_secret" ]; then
        "$PREFIX/venv/bin/edgeface" command-secret --file "$ETC/command_secret" 2>/dev/null \
            || die "cannot create the command secret $ETC/command_secret"
        chown root:root "$ETC/command_secret"
        chmod 0600 "$ETC/command_secret"
        say "created the MQTT command secret $ETC/command_secret (0600 root; the service gets it as the credential"
        say "  command_secret). Without it the station would answer only status. Sign commands with it:"
        say "  sudo $PREFIX/venv/bin/edgeface sign-command --secret-file $ETC/command_secret forget '{\"name\": \"Ada\"}'"
    fi
    if [ -n "$MQTT_PASSWORD_FILE" ]; then
        install -m 0600 -o root -g root "$MQTT_PASSWORD_FILE" "$ETC/mqtt_password"
    fi
}

install_unit() {  # install_unit [drop-in files...]
    install -m 0644 "$REPO/systemd/edgeface.service" "$UNIT_DIR/edgeface.service"
    install -d -m 0755 "$UNIT_DIR/edgeface.service.d"
    local drop_in
    for drop_in in "$@"; do
        install -m 0644 "$drop_in" "$UNIT_DIR/edgeface.service.d/$(basename "$drop_in")"
    done
    if [ -f "$ETC/mqtt_password" ]; then
        rm -f "$UNIT_DIR/edgeface.service.d/no-mqtt-password.conf"
    else
        install -m 0644 "$REPO/systemd/no-mqtt-password.conf" "$UNIT_DIR/edgeface.service.d/no-mqtt-password.conf"
    fi
    systemctl daemon-reload
    systemctl enable edgeface.service >/dev/null
    if [ "$START" = 1 ]; then
        say "(re)starting edgeface"
        systemctl restart edgeface.service
    fi
}

run_doctor() {  # as the service user, with the service's credential and device access (systemd-run)
    say "edgeface doctor (as $SERVICE_USER, through systemd-run):"
    local args=(--config "$ETC/edgeface.yaml")
    [ -n "$MQTT_URL" ] && args+=(--mqtt-url "$MQTT_URL")
    [ "$START" = 1 ] || args+=(--source "$SOURCE_SPEC")  # a running service holds the camera
    local properties=(-p User="$SERVICE_USER" -p SupplementaryGroups=video -p Environment=EDGEFACE_GALLERY="$STATE/gallery.db"
                      -p DevicePolicy=closed -p DeviceAllow="char-video4linux rw" -p DeviceAllow="char-media rw")
    [ -f "$ETC/mqtt_password" ] && properties+=(-p LoadCredential=mqtt_password:"$ETC/mqtt_password")
    properties+=(-p LoadCredential=command_secret:"$ETC/command_secret")
    systemd-run --quiet --wait --pipe --collect "${properties[@]}" "$PREFIX/venv/bin/edgeface" doctor "${args[@]}" \
        || say "doctor found problems: fix the lines marked fail, then: sudo systemctl restart edgeface"
}
