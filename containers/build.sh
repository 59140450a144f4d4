#!/usr/bin/env bash
# Build a saul-hpc Apptainer image from containers/saul-<flavor>.def, stamped with the git revision.
#
#   containers/build.sh {rocm|cuda|cpu} [--out DIR | --cache] [--allow-dirty]
#
# Writes DIR/saul-<flavor>-<revision>.sif and DIR/saul-<flavor>-<revision>.sif.json (revision, build time, sha256
# of the def file and of the dependency files). Build off-cluster (needs internet and Apptainer >= 1.2), then copy
# the image in. With --cache the image is named by the hash of its dependency files (definition,
# requirements-image.txt, constraints.txt) in $SAUL_IMAGE_CACHE (default /var/cache/saul-images) and built only
# when that file is not there yet: what `make image` and the container tests use.
# The image's path is the last line on stdout; everything else goes to stderr.
# Exit status 2: usage error, apptainer missing, or uncommitted changes without --allow-dirty.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: containers/build.sh {rocm|cuda|cpu} [--out DIR | --cache] [--allow-dirty]
  rocm          AMD MI250X (gfx90a): ADASTRA, LUMI-G
  cuda          NVIDIA (H100/A100): Jean Zay
  cpu           CPU only: local tests, CI (Debian bookworm by debootstrap, no Docker Hub)
  --out DIR     where the image goes (default: build/containers in the repository)
  --cache       reuse or build $SAUL_IMAGE_CACHE/saul-<flavor>-<dependency hash>.sif
                (default cache /var/cache/saul-images); only the dependency files must be committed
  --allow-dirty build from a working tree with uncommitted or untracked files (stamped dirty)
EOF
}

die() {
    local code=$1
    shift
    printf 'build.sh: %s\n' "$*" >&2
    exit "$code"
}

json_str() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/\\t}
    printf '"%s"' "$s"
}

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${script_dir}/.." && pwd)"

flavor=""
out=""
cache=0
allow_dirty=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        rocm | cuda | cpu)
            [[ -z "$flavor" ]] || { usage >&2; die 2 "give one flavor, not '$flavor' and '$1'"; }
            flavor=$1
            ;;
        --out)
            [[ $# -ge 2 ]] || { usage >&2; die 2 "--out needs a directory"; }
            out=$2
            shift
            ;;
        --out=*) out=${1#--out=} ;;
        --cache) cache=1 ;;
        --allow-dirty) allow_dirty=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die 2 "unknown argument '$1'"
            ;;
    esac
    shift
done
[[ -n "$flavor" ]] || { usage >&2; die 2 "missing flavor (rocm, cuda or cpu)"; }
[[ $cache -eq 0 || -z "$out" ]] || { usage >&2; die 2 "give --out or --cache, not both"; }

def="${script_dir}/saul-${flavor}.def"
[[ -f "$def" ]] || die 2 "definition file not found: $def"

if ! command -v apptainer >/dev/null 2>&1; then
    die 2 "apptainer is not on PATH. Build on a machine with Apptainer >= 1.2 (https://apptainer.org/docs/admin/main/installation.html; on Debian bookworm: scripts/install-apptainer.sh), then copy the image to the cluster."
fi

# What the image's content depends on, in this order; jobs/container_image.py computes the same hash.
deps_files=("containers/saul-${flavor}.def" "containers/requirements-image.txt" "constraints.txt")
for f in "${deps_files[@]}"; do
    [[ -f "${repo}/$f" ]] || die 2 "dependency file not found: ${repo}/$f"
done
deps_sha256="$(cd "$repo" && sha256sum "${deps_files[@]}" | sha256sum | cut -d' ' -f1)"

# Revision and cleanliness of the tree the image is built from (with --cache: of the dependency files only,
# since nothing else goes into a cached image's name).
dirty_scope=()
[[ $cache -eq 1 ]] && dirty_scope=(-- "${deps_files[@]}")
revision="none"
dirty=1
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    revision="$(git -C "$repo" rev-parse --verify --quiet HEAD || true)"
    [[ -n "$revision" ]] || revision="none"
    if [[ "$revision" != "none" &&
        -z "$(git -C "$repo" status --porcelain --untracked-files=normal "${dirty_scope[@]}")" ]]; then
        dirty=0
    fi
    in_git=1
else
    in_git=0
fi
if [[ $dirty -eq 1 && $allow_dirty -eq 0 ]]; then
    if [[ $in_git -eq 0 ]]; then
        die 2 "$repo is not a git working tree, so the image could not be traced to a revision. Use --allow-dirty to build anyway."
    elif [[ "$revision" == "none" ]]; then
        die 2 "the repository has no commit yet, so the image could not be traced to a revision. Commit first, or use --allow-dirty."
    else
        die 2 "the working tree has uncommitted or untracked changes (git status --porcelain ${dirty_scope[*]}). Commit them, or use --allow-dirty."
    fi
fi

dirty_word=false
[[ $dirty -eq 1 ]] && dirty_word=true
tag="${revision:0:12}"
[[ "$revision" == "none" ]] && tag="norev"
[[ $dirty -eq 1 ]] && tag="${tag}-dirty"
if [[ $cache -eq 1 ]]; then
    out="${SAUL_IMAGE_CACHE:-/var/cache/saul-images}"
    tag="${deps_sha256:0:16}"
fi

[[ -n "$out" ]] || out="${repo}/build/containers"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
image="${out}/saul-${flavor}-${tag}.sif"
stamp="${image}.json"
if [[ $cache -eq 1 && -f "$image" && -f "$stamp" ]]; then
    printf 'build.sh: cached image for these dependency files: %s\n' "$image" >&2
    printf '%s\n' "$image"
    exit 0
fi
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
def_sha256="$(sha256sum "$def" | cut -d' ' -f1)"

# Copy exactly the files git knows about (tracked + untracked, not ignored) into a staging directory:
# no build outputs, runs or images end up in the image. The image is written under a temporary name and
# renamed when complete: an interrupted build never leaves a half image under the (cached) name.
stage="$(mktemp -d "${out}/.saul-src-${flavor}.XXXXXX")"
inputs="$(mktemp -d "${out}/.saul-inputs-${flavor}.XXXXXX")"
partial="${out}/.saul-${flavor}-${tag}.sif.partial-$$"
trap 'rm -rf "$stage" "$inputs" "$partial"' EXIT
if [[ $in_git -eq 1 ]]; then
    (
        cd "$repo"
        git ls-files -z --cached --others --exclude-standard |
            while IFS= read -r -d '' f; do
                if [[ -e "$f" || -L "$f" ]]; then printf '%s\0' "$f"; fi
            done |
            tar --null -T - -cf -
    ) | tar -xf - -C "$stage"
else
    (cd "$repo" && tar --exclude=./build --exclude=./runs --exclude='*.sif' -cf - .) | tar -xf - -C "$stage"
fi

# Build inputs that are not in git and are removed from the image by %post: the build host's extra CA
# certificates (an HTTPS proxy's) and, for the CPU image, the torch wheel pip takes on this host (a local wheel
# where there is one; elsewhere point pip at https://download.pytorch.org/whl/cpu with PIP_INDEX_URL).
mkdir -p "${inputs}/ca-certificates" "${inputs}/wheels"
for crt in /usr/local/share/ca-certificates/*.crt; do
    if [[ -f "$crt" ]]; then cp "$crt" "${inputs}/ca-certificates/"; fi
done
if grep -q '{{ *SAUL_INPUTS_DIR *}}/wheels\|inputs/wheels/torch' "$def"; then
    torch_pin="$(sed -n 's/^\(torch==[^[:space:]#]*\).*/\1/p' "${repo}/constraints.txt" | head -n 1)"
    [[ -n "$torch_pin" ]] || die 2 "constraints.txt pins no torch==VERSION; the $flavor image installs that pin"
    "${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: -d "${inputs}/wheels" "$torch_pin" >&2 ||
        die 2 "pip could not fetch a $torch_pin wheel for the $flavor image (give pip a CPU wheel: PIP_FIND_LINKS=DIR or PIP_INDEX_URL=https://download.pytorch.org/whl/cpu)"
fi
chmod -R a+rX "$stage" "$inputs"

cmd=(apptainer build --force)
# A debootstrap bootstrap asks for every capability in %post: it needs --fakeroot even as root.
if [[ "$(id -u)" -ne 0 ]] || grep -q '^Bootstrap:[[:space:]]*debootstrap' "$def"; then
    cmd+=(--fakeroot)
fi
cmd+=(
    --build-arg "SAUL_GIT_REVISION=${revision}"
    --build-arg "SAUL_GIT_DIRTY=${dirty_word}"
    --build-arg "SAUL_BUILD_DATE=${build_date}"
    --build-arg "SAUL_DEPS_SHA256=${deps_sha256}"
    --build-arg "SAUL_SRC_DIR=${stage}"
    --build-arg "SAUL_INPUTS_DIR=${inputs}"
    "$partial"
    "$def"
)
printf 'build.sh: %s\n' "${cmd[*]}" >&2
started=$SECONDS
(cd "$repo" && "${cmd[@]}") >&2
mv -f "$partial" "$image"
build_seconds=$((SECONDS - started))
image_bytes="$(stat -c %s "$image")"

apptainer_version="$(apptainer --version 2>/dev/null || echo unknown)"
{
    printf '{\n'
    printf '  "image": %s,\n' "$(json_str "$image")"
    printf '  "flavor": %s,\n' "$(json_str "$flavor")"
    printf '  "git_revision": %s,\n' "$(json_str "$revision")"
    printf '  "git_dirty": %s,\n' "$dirty_word"
    printf '  "built_at": %s,\n' "$(json_str "$build_date")"
    printf '  "def_file": %s,\n' "$(json_str "containers/saul-${flavor}.def")"
    printf '  "def_sha256": %s,\n' "$(json_str "$def_sha256")"
    printf '  "deps_sha256": %s,\n' "$(json_str "$deps_sha256")"
    printf '  "build_seconds": %s,\n' "$build_seconds"
    printf '  "image_bytes": %s,\n' "$image_bytes"
    printf '  "apptainer_version": %s\n' "$(json_str "$apptainer_version")"
    printf '}\n'
} >"${stamp}.tmp"
mv -f "${stamp}.tmp" "$stamp"

cat >&2 <<EOF
Built in ${build_seconds} s: $((image_bytes / 1000000)) MB.
Image: ${image}
Stamp: ${stamp}
Copy the image to the cluster (compute nodes have no internet), then point a site config at it, either
per run:   python jobs/submit.py ... site.container.image=<path on the cluster>/$(basename "$image")
or for good: container.image in site_configs/<site>.yaml
EOF
printf '%s\n' "$image"
