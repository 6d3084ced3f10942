#!/bin/sh
# @PACKAGE@: make the package's virtual environment under @PREFIX@ (docs/packaging.md).
# Run as root by the package's maintainer scripts, never by hand (but it is safe to rerun).
#
#   make-venv           build a new venv from the wheels in @LIB@ and point @PREFIX@/venv at it
#   make-venv --remove  remove this package's venvs (the package is being removed)
#
# A new venv is built beside the one in use and swapped in with one rename of the symlink
# @PREFIX@/venv, so a process that is running (a processor finishing an upload, a receiver
# mid-stream) keeps its own complete tree and every new process gets a complete new one; the
# previous tree is kept until the next upgrade, so nothing that is running loses its files.
set -eu

prefix=@PREFIX@
lib=@LIB@
python=@PYTHON@
# Collectors run the receiver from this tree: all of it readable, none of it writable by them.
umask 022

if [ "${1-}" = --remove ]; then
    # rm -rf on the symlink removes the link, not what it points at; then each tree.
    rm -rf "$prefix/venv" "$prefix"/venv-*
    rmdir "$prefix" 2>/dev/null || true
    exit 0
fi

if [ ! -x "$python" ]; then
    echo "@PACKAGE@: $python is missing; install Python 3.11 (python3.11) and try again" >&2
    exit 1
fi
if [ -L "$prefix" ] || { [ -e "$prefix" ] && [ ! -d "$prefix" ]; }; then
    echo "@PACKAGE@: $prefix is not a folder; move it away, then reinstall the package" >&2
    exit 1
fi
[ -d "$prefix" ] || mkdir -m 0755 "$prefix"

new=$(mktemp -d "$prefix/venv-@VERSION@.XXXXXX")
trap 'rm -rf "$new"' EXIT
trap 'exit 1' INT TERM HUP
chmod 0755 "$new"
"$python" -I -m venv --without-pip "$new"
# pip runs from its own wheel (hash-pinned at build time) and reads no pip.conf and no PIP_*
# variable of whoever runs the package manager: only the wheels here, each by its sha256.
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PIP_CONFIG_FILE=/dev/null \
    "$new/bin/python" -I "$lib/pip.whl/pip" install --quiet --no-index --no-cache-dir \
    --disable-pip-version-check --root-user-action=ignore --no-warn-script-location \
    --require-hashes --find-links "$lib/wheels" -r "$lib/wheels/requirements.txt"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PIP_CONFIG_FILE=/dev/null \
    "$new/bin/python" -I "$lib/pip.whl/pip" check --disable-pip-version-check >/dev/null
# pip wrote this tree's own path into the scripts' first lines; the stable path keeps
# sys.executable (and so the ForceCommand sshd-config prints) valid after the next upgrade.
for script in "$new"/bin/*; do
    if [ -f "$script" ] && [ ! -L "$script" ]; then
        sed -i "1s|^#!$new/bin/python|#!$prefix/venv/bin/python|" "$script"
    fi
done

old=$(readlink "$prefix/venv" 2>/dev/null || true)
if [ -e "$prefix/venv" ] && [ ! -L "$prefix/venv" ]; then
    # Not ours (a venv made by hand): keep it, out of the way.
    aside="$prefix/venv.replaced.$(date +%Y%m%d%H%M%S)"
    mv "$prefix/venv" "$aside"
    echo "@PACKAGE@: moved the existing $prefix/venv to $aside" >&2
fi
ln -s "${new##*/}" "$prefix/venv.new.$$"
mv -T "$prefix/venv.new.$$" "$prefix/venv"
trap - EXIT

for tree in "$prefix"/venv-*; do
    case "${tree##*/}" in
        "${new##*/}" | "$old") ;;
        *) rm -rf "$tree" ;;
    esac
done
