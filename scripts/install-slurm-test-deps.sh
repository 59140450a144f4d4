#!/usr/bin/env bash
# Install what tests/slurm_cluster.py needs to run a real Slurm cluster on this machine
# (Debian 12 / bookworm, as root). Idempotent: does nothing when everything is present.
# Starts no daemon: the test suite starts and stops its own munged, MariaDB, slurmdbd,
# slurmctld and slurmd under a temporary directory.
set -euo pipefail

PACKAGES=(
  slurmctld                # controller
  slurmd                   # compute node daemon (several per host with `slurmd -N`)
  slurm-client             # sbatch, srun, sacct, scontrol, sinfo, sacctmgr
  slurm-wlm-basic-plugins  # proctrack/linuxproc, select/cons_tres, acct_gather_energy/pm_counters
  slurmdbd                 # accounting daemon, needed for full sacct
  slurm-wlm-mysql-plugin   # accounting_storage/mysql used by slurmdbd
  munge                    # authentication between Slurm daemons and clients
  mariadb-server           # database behind slurmdbd (mariadbd, mariadb-install-db)
  mariadb-client           # mariadb / mariadb-admin, used to create the accounting database
  util-linux               # unshare: one UTS (and mount) namespace per slurmd
  hostname                 # sets each node's hostname inside its namespace
)

if [[ $(id -u) -ne 0 ]]; then
  echo "install-slurm-test-deps.sh: must run as root" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$pkg")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "Slurm test dependencies already installed."
  exit 0
fi

# Package maintainer scripts start munge/mariadb/slurm services through invoke-rc.d; a
# policy-rc.d that answers 101 ("action forbidden") keeps every daemon stopped.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  created_policy=1
fi
remove_policy() { if [[ $created_policy -eq 1 ]]; then rm -f "$policy"; fi; }
trap remove_policy EXIT

echo "Installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y "${missing[@]}"
