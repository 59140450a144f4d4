#!/usr/bin/env bash
# PDF extraction for the prepare stage (saul/data/pdf_text.py), installed once per machine before the
# Python packages: PyPI's `pdftotext` binding has no wheels, its sdist compiles one C++ file against
# Debian's libpoppler-cpp-dev. Also poppler-utils: the tests compare the binding with the pdftotext tool.
# Idempotent; run by `make setup`/`make test` (Makefile) before `pip install -e .[train]`.
set -euo pipefail
need_apt=()
for pkg in libpoppler-cpp-dev poppler-utils g++ pkg-config; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  apt-get install -y -q "${need_apt[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${need_apt[@]}" >/dev/null; }
fi
