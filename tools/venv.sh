#!/bin/sh
# Make (or reuse) the project virtualenv:  sh tools/venv.sh PY DIR
#
#   PY   the base interpreter (any Python >= 3.10), e.g. python3 or /usr/bin/python3
#   DIR  where the virtualenv goes, e.g. .venv
#
# A working DIR (its python runs pip) is reused as it is. Otherwise DIR is made by `PY -m venv`; where PY has
# no venv/ensurepip (Debian and Ubuntu ship them in a separate package, python3-venv), by `uv venv --seed` when
# uv is installed (the UV variable names another uv), else, as root, after `apt-get install python3-venv`.
# Anything else stops with one line that names the fix.
set -eu

PY=$1
DIR=$2
UV=${UV:-uv}

fail() {
    echo "error: $*" >&2
    exit 1
}

works() {  # DIR's python runs pip: the virtualenv is complete
    [ -x "$DIR/bin/python" ] && "$DIR/bin/python" -m pip --version >/dev/null 2>&1
}

has_venv() {  # PY can make a virtualenv with pip in it
    "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1
}

venv_package() {  # Debian's package with PY's venv: python3-venv for the default python3, else pythonX.Y-venv
    ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    default=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "$ver")
    if [ "$ver" = "$default" ]; then echo python3-venv; else echo "python$ver-venv"; fi
}

if works; then
    exit 0
fi
command -v "$PY" >/dev/null 2>&1 || fail "no Python at '$PY': install Python >= 3.10, or pass PY=/path/to/python3"
if [ -e "$DIR" ]; then
    # Left half-made by an interrupted or failed attempt: start again, but never delete what is not a virtualenv.
    [ -f "$DIR/pyvenv.cfg" ] || fail "$DIR exists and is not a virtualenv: move it away, or pass VENV=another/dir"
    rm -rf "$DIR"
fi

if has_venv; then
    "$PY" -m venv "$DIR"
elif command -v "$UV" >/dev/null 2>&1; then
    "$UV" venv --quiet --seed --python "$PY" "$DIR"
else
    pkg=$(venv_package)
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "$PY cannot make a virtualenv yet: installing $pkg"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null) \
            || fail "apt-get install $pkg failed: install it by hand, then run make again"
        has_venv || fail "$PY still cannot make a virtualenv after installing $pkg: pass PY=/path/to/another/python3"
        "$PY" -m venv "$DIR"
    else
        fail "$PY cannot make a virtualenv (no venv/ensurepip module): run 'sudo apt-get install $pkg', then make again"
    fi
fi
works || fail "$DIR was made but its python cannot run pip: remove $DIR and run make again"
