#!/usr/bin/env bash
# KenLM for the prepare stage's perplexity filter, installed once per machine:
#   - the `kenlm` Python query module (PyPI sdist, compiles in ~65 s)
#   - `lmplz` and `build_binary`, KenLM's own model builder, compiled from the same sdist (which
#     carries lm/builder) with cmake and Debian's boost; PyPI's package does not install them.
# Result: lmplz and build_binary in $KENLM_BIN (default /usr/local/bin). Idempotent.
set -euo pipefail
KENLM_VERSION=0.3.0
KENLM_BIN=${KENLM_BIN:-/usr/local/bin}
PY=${PY:-python3}

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
for pkg in libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev \
           zlib1g-dev libbz2-dev liblzma-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  apt-get install -y -q "${need_apt[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${need_apt[@]}" >/dev/null; }
fi

$PY -c "import kenlm" 2>/dev/null || $PY -m pip install --disable-pip-version-check -q -c constraints.txt "kenlm==$KENLM_VERSION"

if [[ -x "$KENLM_BIN/lmplz" && -x "$KENLM_BIN/build_binary" ]]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$PY -m pip download --disable-pip-version-check -q --no-deps --no-binary kenlm --no-build-isolation \
  "kenlm==$KENLM_VERSION" -d "$work"
tar -xzf "$work/kenlm-$KENLM_VERSION.tar.gz" -C "$work"
src="$work/kenlm-$KENLM_VERSION"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DKENLM_MAX_ORDER=6 -DCOMPILE_TESTS=OFF >/dev/null
cmake --build "$work/build" --target lmplz build_binary -j "$(nproc)" >/dev/null
install -m 0755 "$work/build/bin/lmplz" "$work/build/bin/build_binary" "$KENLM_BIN/"
echo "installed lmplz and build_binary in $KENLM_BIN"
