#!/usr/bin/env bash
# Install the distribution packages the test suite runs for real (idempotent: installs only what
# is missing): a PostgreSQL server (the shared queue of several `hyvideo serve` processes) and a
# headless Chromium with its WebDriver (the web page's browser test). The tests start their own
# throwaway PostgreSQL cluster and browser in temporary directories and stop them after; nothing
# is left running and no system service is started or configured.
#
# Needs: Debian or Ubuntu, run as root (or with sudo) when something is missing.
set -euo pipefail

need=()
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
if [[ -z "$pg_bin" || ! -x "$pg_bin/initdb" || ! -x "$pg_bin/pg_ctl" ]]; then
  need+=(postgresql)
fi
[[ -x /usr/bin/chromium ]] || need+=(chromium)
[[ -x /usr/bin/chromedriver ]] || need+=(chromium-driver)

if [[ ${#need[@]} -eq 0 ]]; then
  echo "setup: PostgreSQL ($pg_bin) and Chromium ($(/usr/bin/chromium --version 2>/dev/null | tr -d '\n')) already installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: the tests need ${need[*]} (Debian package names); install them with your package manager" >&2
  exit 1
fi
sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "setup: the tests need the packages ${need[*]}: run as root: apt-get install ${need[*]}" >&2
    exit 1
  fi
fi
echo "setup: installing ${need[*]} from the distribution's packages"
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale on a new machine.
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${need[@]}"
# Debian's postgresql package starts a system cluster; the tests use their own, so leave the
# system one as the package set it up (it listens on its own port 5432 and is not touched).
echo "setup: installed ${need[*]}"
