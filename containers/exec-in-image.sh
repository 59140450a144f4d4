#!/usr/bin/env bash
# Run a command inside the job's Apptainer image, on a compute node, after checking what only the node can tell:
# the runtime is on PATH, the image is there and readable, every bind source exists. The batch script runs each
# rank and the power meter through this (jobs/slurm_launcher.py rank_python()).
#
#   containers/exec-in-image.sh RUNTIME GPU_FLAG BINDS IMAGE COMMAND [ARG...]
#     RUNTIME   apptainer | singularity
#     GPU_FLAG  --rocm | --nv | "" (none)
#     BINDS     comma-separated SRC[:DEST[:OPTS]] list, as `apptainer exec --bind` takes it
#
# A problem gives one `error: ...` line naming the node and the fix, and exit status 2, which the requeue path
# (saul.resilience.after_job) never retries: a missing bind does not heal by itself.
set -euo pipefail

node=${SLURMD_NODENAME:-$(hostname)}
fail() {
    printf 'error: %s\n' "$*" >&2
    exit 2
}

[[ $# -ge 5 ]] || fail "usage: exec-in-image.sh RUNTIME GPU_FLAG BINDS IMAGE COMMAND [ARG...]"
runtime=$1 gpu_flag=$2 binds=$3 image=$4
shift 4

command -v "$runtime" >/dev/null 2>&1 ||
    fail "container runtime '$runtime' is not on PATH on node $node: load its module (site.modules) or set site.container.runtime"
[[ -e "$image" ]] ||
    fail "container image $image does not exist on node $node: put it on a file system the compute nodes mount and set site.container.image"
[[ -f "$image" && -r "$image" ]] ||
    fail "container image $image is not a readable file on node $node: chmod a+r it or set site.container.image to a readable copy"
if [[ -n "$binds" ]]; then
    IFS=, read -r -a bind_list <<<"$binds"
    for bind in "${bind_list[@]}"; do
        source_path=${bind%%:*}
        [[ -e "$source_path" ]] ||
            fail "bind path $source_path (site.container.binds) does not exist on node $node: create it there or remove it from site.container.binds"
    done
fi

args=(exec)
[[ -n "$gpu_flag" ]] && args+=("$gpu_flag")
[[ -n "$binds" ]] && args+=(--bind "$binds")
exec "$runtime" "${args[@]}" "$image" "$@"
