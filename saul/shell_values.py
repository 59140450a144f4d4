"""Values that reach a shell (the Slurm batch script): the quoting rule, and the site values refused outright.

The rule, for every value a user or a site file can set:
- A value that names a node-side location (`site.env` values, `site.container.binds`, the image
  path) may refer to environment variables of the compute node as `$NAME` or `${NAME}`: those,
  and only those, expand there (`$SCRATCH/x`, `/tmp/$USER-$SLURM_JOB_ID`). Everything else is
  literal: it is rendered inside "..." with `$`, backtick, `"` and `\\` escaped, so
  `a$(touch /tmp/x)b`, `${X:-$(cmd)}` or `` `cmd` `` arrive as text, never run.
- Every other value (module names, paths of the run, the host Python, account...) is fully
  literal: shlex-quoted.
- No value may hold a newline or another control character (a newline ends a `#SBATCH` line
  and starts a command); environment names must be shell identifiers.
- A `site.env` name that looks like a credential (`*_TOKEN`, `*_KEY`, `*_SECRET`, `*_PASSWORD`)
  is refused: its value would be written into config.yaml and the batch script. Such variables
  go by name in `site.env_passthrough` and travel from the submitting shell at run time.

Standard library only.
"""
from __future__ import annotations

import re
from typing import Iterable, List, Tuple

from saul.config.errors import ConfigError

NODE_VARIABLE = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CREDENTIAL_SUFFIXES = ("_TOKEN", "_KEY", "_SECRET", "_PASSWORD")


def node_expanded(text: str) -> str:
    """`text` in double quotes for bash: $NAME / ${NAME} expand on the node, nothing else does."""
    out, pos = [], 0
    for match in NODE_VARIABLE.finditer(text):
        out.append(_escaped(text[pos:match.start()]))
        out.append(match.group(0))
        pos = match.end()
    out.append(_escaped(text[pos:]))
    return '"' + "".join(out) + '"'


def _escaped(literal: str) -> str:
    return re.sub(r'([$`"\\])', r"\\\1", literal)


def looks_like_credential(name: str) -> bool:
    upper = name.upper()
    return any(upper.endswith(suffix) or upper == suffix[1:] for suffix in CREDENTIAL_SUFFIXES)


def _site_strings(site) -> Iterable[Tuple[str, str]]:
    """(key as the user writes it, value) for every string of the site that can reach the batch script."""
    for key in ("name", "partition", "account", "account_env", "qos", "wckey", "host_python"):
        yield f"site.{key}", str(site.get(key, "") or "")
    for key in ("gpu_cpu_bind", "sbatch_extra", "srun_extra", "modules", "env_passthrough"):
        for i, value in enumerate(site.get(key, []) or []):
            yield f"site.{key}[{i}]", str(value)
    for name, value in (site.get("env", {}) or {}).items():
        yield f"site.env.{name}", str(value)
    container = site.container
    for key in ("image", "runtime", "gpu_flag"):
        yield f"site.container.{key}", str(container.get(key, "") or "")
    for i, value in enumerate(container.get("binds", []) or []):
        yield f"site.container.binds[{i}]", str(value)
    for name, value in (container.get("env", {}) or {}).items():
        yield f"site.container.env.{name}", str(value)


def check_site_values(site, submitting_env=None) -> None:
    """Raise ConfigError for the first site value that cannot be rendered safely (see the module doc);
    with `submitting_env` (a real submit), also for a passthrough variable that this shell does not set."""
    for key, value in _site_strings(site):
        if CONTROL.search(value):
            raise ConfigError(f"{key}={value!r} contains a newline or control character: remove it")
    for group in ("env", "container.env"):
        env = site.get("env", {}) if group == "env" else site.container.get("env", {})
        for name in (env or {}):
            if not IDENTIFIER.match(str(name)):
                raise ConfigError(f"site.{group}.{name}: not a valid environment variable name "
                                  f"(letters, digits and '_', not starting with a digit)")
            if looks_like_credential(str(name)):
                raise ConfigError(
                    f"site.{group}.{name} looks like a credential: its value would be written into config.yaml and "
                    f"the batch script. Export it in your shell instead and pass it by name: "
                    f"site.env_passthrough=[{name}] (and remove site.{group}.{name})")
    for name in site.get("env_passthrough", []) or []:
        if not IDENTIFIER.match(str(name)):
            raise ConfigError(f"site.env_passthrough: '{name}' is not a valid environment variable name")
    missing = missing_passthrough(site, submitting_env) if submitting_env is not None else []
    if missing:
        raise ConfigError(f"site.env_passthrough names {', '.join(missing)} but this shell does not set "
                          f"{'it' if len(missing) == 1 else 'them'}: export {missing[0]}=... before submitting")


def missing_passthrough(site, env) -> List[str]:
    """The names in site.env_passthrough that the submitting environment does not set."""
    return [name for name in (site.get("env_passthrough", []) or []) if name not in env]
