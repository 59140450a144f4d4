#!/usr/bin/env bash
# Install a working Apptainer on this machine kind (Debian 12 / bookworm, as root) for the container tests.
# Idempotent: does nothing when `apptainer exec` already works.
#
# Bookworm has no apptainer package; sid's (1.4.x) needs glibc 2.38 (bookworm has 2.36). So, as seen working in
# shared/notes/local-slurm-cluster.md (section Apptainer):
#   1. a few bookworm packages (squashfs, fuse, debootstrap, patchelf...),
#   2. sid's apptainer and libc6 .debs DOWNLOADED (not installed) with a private apt state, unpacked under PREFIX,
#   3. apptainer and its starter re-pointed at sid's libc with patchelf (DT_RPATH, not RUNPATH: apptainer re-runs
#      itself with LD_LIBRARY_PATH set to the host's libc, which RUNPATH would lose to),
#   4. its etc/ and var/ linked where it looks for them, `root default capabilities = file` (this VM withholds
#      CAP_SYS_RESOURCE), a root entry in /etc/subuid and /etc/subgid (for --fakeroot),
#   5. one link: /usr/local/bin/apptainer.
# Nothing else is installed system-wide. PREFIX defaults to /opt/saul-apptainer (SAUL_APPTAINER_PREFIX).
set -euo pipefail

PREFIX=${SAUL_APPTAINER_PREFIX:-/opt/saul-apptainer}
LINK=/usr/local/bin/apptainer
BOOKWORM_PACKAGES=(patchelf squashfs-tools squashfuse fuse2fs uidmap containernetworking-plugins debootstrap)

die() { echo "install-apptainer.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root"

works() { "$LINK" --version >/dev/null 2>&1 && "$LINK" buildcfg >/dev/null 2>&1; }
if works && [[ -f "$PREFIX/.complete" && "$(readlink -f "$LINK")" == "$(readlink -f "$PREFIX/usr/bin/apptainer")" ]]; then
  echo "Apptainer already installed: $("$LINK" --version) ($PREFIX)"
  exit 0
fi

missing=()
for pkg in "${BOOKWORM_PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$pkg")
done
export DEBIAN_FRONTEND=noninteractive
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "Installing: ${missing[*]}"
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi

# The machine's own Debian mirror (first deb URI of its sources), suite sid, in a private apt state.
mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/*.sources \
  2>/dev/null | head -n 1)
if [[ -z $mirror ]]; then
  mirror=$(sed -n 's/^deb[[:space:]]\+\(http[^[:space:]]*\/debian\)[[:space:]].*/\1/p' /etc/apt/sources.list 2>/dev/null \
    | head -n 1)
fi
[[ -n $mirror ]] || die "no Debian mirror found in /etc/apt/sources.list(.d); cannot fetch sid's apptainer"

scratch=$(mktemp -d /tmp/saul-apptainer-install.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/lists/partial" "$scratch/cache/archives/partial" "$scratch/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" >"$scratch/sources.list"
apt_sid=(-o "Dir::Etc::SourceList=$scratch/sources.list" -o "Dir::Etc::SourceParts=-"
  -o "Dir::State::Lists=$scratch/lists" -o "Dir::Cache=$scratch/cache" -o "APT::Architecture=amd64"
  -o "APT::Sandbox::User=root")  # the scratch folder is not readable by _apt
echo "Fetching sid's apptainer and libc6 from $mirror"
apt-get "${apt_sid[@]}" update -qq
(cd "$scratch/debs" && apt-get "${apt_sid[@]}" download apptainer libc6)

rm -rf "$PREFIX.new"
mkdir -p "$PREFIX.new/libc"
for deb in "$scratch"/debs/apptainer_*.deb; do dpkg-deb -x "$deb" "$PREFIX.new"; done
for deb in "$scratch"/debs/libc6_*.deb; do dpkg-deb -x "$deb" "$PREFIX.new/libc"; done

libdir=$PREFIX/libc/usr/lib/x86_64-linux-gnu  # where it will be once moved into place
for bin in usr/bin/apptainer usr/lib/x86_64-linux-gnu/apptainer/bin/starter; do
  [[ -f "$PREFIX.new/$bin" ]] || die "the apptainer package has no $bin"
  patchelf --set-interpreter "$libdir/ld-linux-x86-64.so.2" "$PREFIX.new/$bin"
  patchelf --remove-rpath "$PREFIX.new/$bin"
  patchelf --force-rpath --set-rpath "$libdir" "$PREFIX.new/$bin"
done
ln -sfn ../etc "$PREFIX.new/usr/etc"
ln -sfn ../../etc "$PREFIX.new/usr/lib/etc"
ln -sfn ../../var "$PREFIX.new/usr/lib/var"
ln -sfn ../var "$PREFIX.new/usr/var"
mkdir -p "$PREFIX.new/var/lib/apptainer/mnt/session"
conf=$PREFIX.new/etc/apptainer/apptainer.conf
[[ -f $conf ]] || die "the apptainer package has no etc/apptainer/apptainer.conf"
sed -i 's/^root default capabilities = .*/root default capabilities = file/' "$conf"
grep -q '^root default capabilities = file$' "$conf" || echo 'root default capabilities = file' >>"$conf"

for f in /etc/subuid /etc/subgid; do
  touch "$f"
  grep -q '^root:' "$f" || echo 'root:200000:65536' >>"$f"
done

rm -rf "$PREFIX"
mv "$PREFIX.new" "$PREFIX"
ln -sfn "$PREFIX/usr/bin/apptainer" "$LINK"
touch "$PREFIX/.complete"
works || die "installed under $PREFIX but '$LINK --version' fails"
echo "Installed $("$LINK" --version) under $PREFIX ($(du -sh "$PREFIX" | cut -f1)); $LINK links to it."
