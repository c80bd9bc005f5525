# Sourced by scripts that need a tool from a Debian package: `need_debian COMMAND PACKAGE` installs
# PACKAGE (apt-get, once per machine) unless COMMAND is already on the PATH.
need_debian() {
    command -v "$1" >/dev/null && return 0
    echo "[setup] installing $2 (Debian package) for $1" >&2
    local sudo=
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$2" >/dev/null
}
