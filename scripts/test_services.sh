#!/usr/bin/env bash
# Install the services that `make test` runs for real (docs/services.md): a PostgreSQL server
# (Debian's `postgresql`) for the store and study tests, and a one-node Slurm cluster (Debian's
# `slurm-wlm` + `munge`) for `reidbench ablate --executor slurm`.
#
# Only what is missing is installed, with apt-get, as root or through passwordless sudo. This
# script never fails the build: without root, network or packages it says why and exits 0; the
# tests that need a service then skip with that reason (tests/conftest.py). It starts nothing:
# the test fixtures start their own servers in temporary folders and stop them at the end.
#
#   scripts/test_services.sh             # both (what `make test` runs first)
#   scripts/test_services.sh postgres    # only PostgreSQL (what the pytest fixture runs when it is missing)
#   scripts/test_services.sh slurm       # only slurm-wlm + munge
#   REIDBENCH_NO_SERVICE_INSTALL=1 ...   # install nothing (the tests skip what is missing)
set -u
PATH="$PATH:/usr/sbin:/sbin"  # slurmctld, slurmd and munged live there; a user's PATH may lack it

say() { echo "test_services: $*" >&2; }

want_postgres=1
want_slurm=1
if [ "$#" -gt 0 ]; then
    want_postgres=0
    want_slurm=0
    for item in "$@"; do
        case "$item" in
            postgres) want_postgres=1 ;;
            slurm) want_slurm=1 ;;
            *) say "unknown service '$item'; valid: postgres, slurm"; exit 0 ;;
        esac
    done
fi

if [ -n "${REIDBENCH_NO_SERVICE_INSTALL:-}" ]; then
    say "REIDBENCH_NO_SERVICE_INSTALL is set: installing nothing"
    exit 0
fi

packages=()
if [ "$want_postgres" = 1 ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    && ! command -v initdb >/dev/null 2>&1; then
    packages+=(postgresql)
fi
if [ "$want_slurm" = 1 ]; then
    for tool in slurmctld slurmd sbatch; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            packages+=(slurm-wlm)
            break
        fi
    done
    if ! command -v munged >/dev/null 2>&1; then
        packages+=(munge)
    fi
fi
if [ "${#packages[@]}" -eq 0 ]; then
    say "already installed: $( [ "$want_postgres" = 1 ] && echo -n 'postgresql ')$( [ "$want_slurm" = 1 ] && echo -n 'slurm-wlm munge')"
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        say "not root and no passwordless sudo: not installing ${packages[*]} (their tests will be skipped)"
        exit 0
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get on this machine: not installing ${packages[*]} (their tests will be skipped)"
    exit 0
fi

start=$(date +%s)
say "installing ${packages[*]} with apt-get (once per machine) ..."
log="$(mktemp)"
# The packages' scripts must not start their system-wide services (the fixtures start their own):
# a temporary policy-rc.d refuses every start, unless the machine already has one.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null && "${SUDO[@]}" chmod 755 "$policy"
    trap '"${SUDO[@]}" rm -f "$policy"' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
if timeout 300 "${SUDO[@]}" apt-get update -qq >"$log" 2>&1 \
    && timeout 900 "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >>"$log" 2>&1; then
    say "installed ${packages[*]} in $(( $(date +%s) - start )) s"
else
    say "apt-get could not install ${packages[*]} (the tests that need them will be skipped); its last lines:"
    tail -n 5 "$log" >&2
fi
rm -f "$log"
exit 0
