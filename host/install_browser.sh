#!/usr/bin/env bash
# Installs headless Chromium for the real-browser tests (tests/browser/) from Debian's packages,
# when it is missing. Idempotent and instant when `chromium` is already on PATH. Needs root (or
# sudo) and apt-get: the CI machine and the dev machines are Debian as root. The tests drive the
# browser over the DevTools protocol with websocket-client (pinned in host/constraints.txt), so
# no WebDriver and no pip package beyond the host's own is needed.
set -euo pipefail
say() { printf '[browser] %s\n' "$*"; }
die() { printf '[browser] ERROR: %s\n' "$*" >&2; exit 1; }

# Thai fonts: the explorer panel speaks Thai, and the browser tests look at it (Debian's TLWG fonts)
thai_fonts() { [ -n "$(fc-list :lang=th 2>/dev/null)" ]; }  # not `| grep -q`: its early exit fails the pipe (pipefail)
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1 && thai_fonts; then
    say "$b present ($("$b" --version 2>/dev/null | head -1)), Thai fonts present; nothing to do"
    exit 0
  fi
done
command -v apt-get >/dev/null 2>&1 || die "no Chromium on PATH and no apt-get to install it: install Chromium (package 'chromium')"
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "installing Chromium needs root: run 'apt-get install chromium' as root"
  sudo="sudo"
fi
log="$(mktemp -t da-browser-install.XXXXXX)"
say "installing Debian's chromium (apt-get; log: $log)"
$sudo apt-get update -qq >>"$log" 2>&1 || { tail -n 15 "$log" >&2; die "apt-get update failed"; }
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium fonts-liberation fonts-thai-tlwg >>"$log" 2>&1 \
  || { tail -n 15 "$log" >&2; die "apt-get could not install chromium"; }
command -v chromium >/dev/null 2>&1 || die "apt-get ran but no 'chromium' is on PATH"
say "installed $(chromium --version 2>/dev/null | head -1)"
