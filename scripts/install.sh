#!/bin/sh
# Install gatekeeper on a Linux host: `make install` runs this (see the Makefile and the
# README's "Install" section). Everything comes from variables, all optional:
#
#   DESTDIR        staging root, for packages and tests ("" installs for real)
#   PREFIX         the virtualenv and shared files          (/opt/gatekeeper)
#   CONFDIR        configuration                            (/etc/gatekeeper)
#   UNITDIR        systemd units                            (/etc/systemd/system)
#   SYSUSERSDIR    the user declaration                     (/etc/sysusers.d)
#   INSTALL_PYTHON interpreter the virtualenv is made from  (/usr/bin/python3)
#   SYSTEM_SETUP   yes: also create the user gatekeeper and reload systemd
#                  (default: yes without DESTDIR, no with it)
#
# Rules it keeps:
# - An existing file under CONFDIR, or an instance drop-in under UNITDIR, is never
#   replaced: it is skipped, and said so. Units, the virtualenv and PREFIX/share are ours
#   and are replaced by each install.
# - /var/lib/gatekeeper is not created here: the units say StateDirectory=gatekeeper, so
#   systemd creates it, owned by the user gatekeeper, when a service starts (and the
#   daemon creates the database's folder itself when run by hand).
# - With DESTDIR the virtualenv is built in the staging root and made to work from PREFIX:
#   its scripts name PREFIX/bin/python, not the staging path.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/gatekeeper}
CONFDIR=${CONFDIR:-/etc/gatekeeper}
UNITDIR=${UNITDIR:-/etc/systemd/system}
SYSUSERSDIR=${SYSUSERSDIR:-/etc/sysusers.d}
if [ -z "${SYSTEM_SETUP:-}" ]; then
    if [ -n "$DESTDIR" ]; then SYSTEM_SETUP=no; else SYSTEM_SETUP=yes; fi
fi
if [ -z "${INSTALL_PYTHON:-}" ]; then
    if [ -x /usr/bin/python3 ]; then INSTALL_PYTHON=/usr/bin/python3; else INSTALL_PYTHON=python3; fi
fi

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: %s\n' "$*" >&2; exit 1; }

for dir in "$PREFIX" "$CONFDIR" "$UNITDIR" "$SYSUSERSDIR"; do
    case $dir in /*) ;; *) die "$dir: PREFIX, CONFDIR, UNITDIR and SYSUSERSDIR must be absolute paths" ;; esac
done

# -- the interpreter ----------------------------------------------------------------------
# The services run with ProtectHome=yes: an interpreter under /home or /root (pyenv,
# a user's conda) is invisible to them, so the virtualenv would not start.
"$INSTALL_PYTHON" - <<'EOF' || die "INSTALL_PYTHON=$INSTALL_PYTHON cannot be used (see above)"
import os, sys
if sys.version_info < (3, 11):
    sys.exit(f"{sys.executable}: Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
base = os.path.realpath(sys.base_prefix)
if base == "/root" or base.startswith(("/root/", "/home/")):
    sys.exit(f"{sys.executable} lives in {base}, which the services cannot see "
             "(ProtectHome=yes): use a system Python, e.g. INSTALL_PYTHON=/usr/bin/python3")
try:
    import ensurepip, venv  # noqa: F401
except ImportError:
    sys.exit(f"{sys.executable} has no venv module: apt-get install python3-venv")
EOF

# -- the virtualenv -----------------------------------------------------------------------
venv=$DESTDIR$PREFIX
if [ ! -x "$venv/bin/python" ]; then
    say "creating the virtualenv $venv ($("$INSTALL_PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])'))"
    "$INSTALL_PYTHON" -m venv "$venv"
fi
# Build from a copy of the sources, so that the working tree gets no build/ folder.
stage=$(mktemp -d "${TMPDIR:-/tmp}/gatekeeper-install.XXXXXX")
trap 'rm -rf "$stage"' EXIT
(cd "$here" && tar --exclude=__pycache__ -cf - pyproject.toml README.md gatekeeper) | (cd "$stage" && tar -xf -)
say "installing gatekeeper and its dependencies into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --upgrade "$stage"
if [ -n "$DESTDIR" ]; then
    # Scripts and activate files name the staging path; make them name PREFIX.
    grep -lIF -- "$venv" "$venv"/bin/* "$venv/pyvenv.cfg" 2>/dev/null | while read -r file; do
        sed -i "s|$venv|$PREFIX|g" "$file"
    done
fi

# -- shared files: units as installed, docs, pristine examples -----------------------------
# Units name /opt/gatekeeper and /etc/gatekeeper; other PREFIX or CONFDIR values are
# written into them here.
subst() { sed -e "s|/opt/gatekeeper|$PREFIX|g" -e "s|/etc/gatekeeper|$CONFDIR|g" "$1"; }
share=$DESTDIR$PREFIX/share
rm -rf "$share/gatekeeper"
install -d -m 0755 "$share/gatekeeper/systemd" "$share/gatekeeper/examples" "$share/doc/gatekeeper"
install -m 0644 "$here/README.md" "$share/doc/gatekeeper/README.md"
(cd "$here/systemd" && find . -type f) | while read -r rel; do
    install -d -m 0755 "$(dirname "$share/gatekeeper/systemd/$rel")"
    subst "$here/systemd/$rel" > "$share/gatekeeper/systemd/$rel"
done
cp -R "$here"/config/etc/. "$share/gatekeeper/examples/"
cp -R "$here"/config/blocklists "$share/gatekeeper/examples/"

# -- units and the user ---------------------------------------------------------------------
units=$DESTDIR$UNITDIR
install -d -m 0755 "$units"
for file in "$here"/systemd/*.service "$here"/systemd/*.socket "$here"/systemd/*.timer; do
    subst "$file" > "$units/$(basename "$file").tmp"
    chmod 0644 "$units/$(basename "$file").tmp"
    mv -f "$units/$(basename "$file").tmp" "$units/$(basename "$file")"
done
say "installed units in $units"

keep_or_copy() {  # SOURCE TARGET: copy unless TARGET exists
    if [ -e "$2" ]; then
        say "kept $2 (it exists; the shipped version is in $PREFIX/share/gatekeeper)"
    else
        install -d -m 0755 "$(dirname "$2")"
        install -m 0644 "$1" "$2"
        say "installed $2"
    fi
}
for dir in "$here"/systemd/*.d; do
    [ -d "$dir" ] || continue
    for file in "$dir"/*.conf; do
        tmp="$stage/$(basename "$file")"
        subst "$file" > "$tmp"
        keep_or_copy "$tmp" "$units/$(basename "$dir")/$(basename "$file")"
    done
done
install -d -m 0755 "$DESTDIR$SYSUSERSDIR"
install -m 0644 "$here/systemd/gatekeeper.sysusers" "$DESTDIR$SYSUSERSDIR/gatekeeper.conf"

# -- the example configuration: never over an administrator's file -------------------------
conf=$DESTDIR$CONFDIR
install -d -m 0755 "$conf"
(cd "$here/config/etc" && find . -type f) | sort | while read -r rel; do
    keep_or_copy "$here/config/etc/$rel" "$conf/${rel#./}"
done
(cd "$here/config" && find blocklists -type f) | sort | while read -r rel; do
    keep_or_copy "$here/config/$rel" "$conf/$rel"
done

# -- this host: the user, systemd -------------------------------------------------------
if [ "$SYSTEM_SETUP" = yes ]; then
    if id gatekeeper >/dev/null 2>&1; then
        say "user gatekeeper exists"
    elif command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers "$SYSUSERSDIR/gatekeeper.conf"
        say "created the system user gatekeeper (systemd-sysusers)"
    else
        useradd --system --user-group --home-dir /var/lib/gatekeeper --no-create-home \
            --shell /usr/sbin/nologin --comment "gatekeeper, gate for IBM i FTP/Telnet" gatekeeper
        say "created the system user gatekeeper (useradd)"
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        say "systemd reloaded its units"
    fi
fi

say "done: $PREFIX/bin/gatekeeper $("$venv/bin/python" -m gatekeeper --version | sed 's/^gatekeeper //')"
if [ -z "$DESTDIR" ]; then
    cat <<EOF
Next: edit $CONFDIR/*.yaml (upstream: your IBM i) and the rules, check them with
  $PREFIX/bin/gatekeeper check -c $CONFDIR/ftp.yaml
then start, e.g. Telnet always and FTP in office hours:
  systemctl enable --now gatekeeper@telnet.service gatekeeper-web.service
  systemctl enable --now gatekeeper-start@ftp.timer gatekeeper-stop@ftp.timer
EOF
fi
