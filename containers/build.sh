#!/usr/bin/env bash
# Build a saul-hpc Apptainer image from containers/saul-<flavor>.def, stamped with the git revision.
#
#   containers/build.sh {rocm|cuda|cpu} [--out DIR] [--allow-dirty]
#
# Writes DIR/saul-<flavor>-<revision>.sif and DIR/saul-<flavor>-<revision>.sif.json (revision, build date,
# sha256 of the def file). Build off-cluster (needs internet and Apptainer >= 1.2), then copy the image in.
# Exit status 2: usage error, apptainer missing, or uncommitted changes without --allow-dirty.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: containers/build.sh {rocm|cuda|cpu} [--out DIR] [--allow-dirty]
  rocm          AMD MI250X (gfx90a): ADASTRA, LUMI-G
  cuda          NVIDIA (H100/A100): Jean Zay
  cpu           CPU only: local tests, CI
  --out DIR     where the image goes (default: build/containers in the repository)
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

def="${script_dir}/saul-${flavor}.def"
[[ -f "$def" ]] || die 2 "definition file not found: $def"

if ! command -v apptainer >/dev/null 2>&1; then
    die 2 "apptainer is not on PATH. Build on a machine with Apptainer >= 1.2 (https://apptainer.org/docs/admin/main/installation.html), then copy the image to the cluster."
fi

# Revision and cleanliness of the tree the image is built from.
revision="none"
dirty=1
if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    revision="$(git -C "$repo" rev-parse --verify --quiet HEAD || true)"
    [[ -n "$revision" ]] || revision="none"
    if [[ "$revision" != "none" && -z "$(git -C "$repo" status --porcelain --untracked-files=normal)" ]]; then
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
        die 2 "the working tree has uncommitted or untracked changes (git status --porcelain). Commit them, or use --allow-dirty."
    fi
fi

dirty_word=false
[[ $dirty -eq 1 ]] && dirty_word=true
tag="${revision:0:12}"
[[ "$revision" == "none" ]] && tag="norev"
[[ $dirty -eq 1 ]] && tag="${tag}-dirty"

[[ -n "$out" ]] || out="${repo}/build/containers"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
image="${out}/saul-${flavor}-${tag}.sif"
stamp="${image}.json"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
def_sha256="$(sha256sum "$def" | cut -d' ' -f1)"

# Copy exactly the files git knows about (tracked + untracked, not ignored) into a staging directory:
# no build outputs, runs or images end up in the image.
stage="$(mktemp -d "${out}/.saul-src-${flavor}.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
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

cmd=(apptainer build --force)
if [[ "$(id -u)" -ne 0 ]]; then
    cmd+=(--fakeroot)
fi
cmd+=(
    --build-arg "SAUL_GIT_REVISION=${revision}"
    --build-arg "SAUL_GIT_DIRTY=${dirty_word}"
    --build-arg "SAUL_BUILD_DATE=${build_date}"
    --build-arg "SAUL_SRC_DIR=${stage}"
    "$image"
    "$def"
)
printf 'build.sh: %s\n' "${cmd[*]}"
(cd "$repo" && "${cmd[@]}")

apptainer_version="$(apptainer --version 2>/dev/null || echo unknown)"
{
    printf '{\n'
    printf '  "image": %s,\n' "$(json_str "$image")"
    printf '  "flavor": %s,\n' "$(json_str "$flavor")"
    printf '  "git_revision": %s,\n' "$(json_str "$revision")"
    printf '  "git_dirty": %s,\n' "$dirty_word"
    printf '  "build_date": %s,\n' "$(json_str "$build_date")"
    printf '  "def_file": %s,\n' "$(json_str "containers/saul-${flavor}.def")"
    printf '  "def_sha256": %s,\n' "$(json_str "$def_sha256")"
    printf '  "apptainer_version": %s\n' "$(json_str "$apptainer_version")"
    printf '}\n'
} >"$stamp"

cat <<EOF
Image: ${image}
Stamp: ${stamp}
Copy the image to the cluster (compute nodes have no internet), then point a site config at it, either
per run:   python jobs/submit.py ... site.container.image=<path on the cluster>/$(basename "$image")
or for good: container.image in site_configs/<site>.yaml
EOF
