"""Compose a run's config from `key=value` overrides in the Hydra grammar.

Order of precedence (last wins): schema defaults < stage preset < model preset < the model's
preset for that stage (presets/model/<model>/<stage>.yaml, optional) < site file < command line.
Hydra's own override parser reads the grammar (`optim.betas=[0.9,0.95]`, `model.sliding_window=null`,
`+site.env.FOO=1`); OmegaConf's structured configs enforce keys and types. We do not use Hydra's
`compose()`: site files live outside the package as pure data, and its global state gets in the way
of a library that is called many times per process (tests).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from saul.config.errors import ConfigError, did_you_mean
from saul.config.schema import STAGES, RunConfig
from saul.config.sites import SiteChoice, choose_site, load_site_file

PRESETS = Path(__file__).resolve().parent / "presets"
GROUPS = ("stage", "model", "site", "data")  # data=NAME: a mixture preset (presets/data/), optional
DEFAULT_MODEL = "mixtral-8x7b"  # the product's main target (SaulLM-54B); CPU runs say model=tiny-mixtral


@dataclass(frozen=True)
class Composed:
    cfg: DictConfig
    site: SiteChoice
    overrides: Tuple[str, ...]


def preset_names(group: str) -> List[str]:
    return sorted(p.stem for p in (PRESETS / group).glob("*.yaml"))


def _parse(overrides: Sequence[str]):
    # Imported here: the parser pulls in antlr, and only composing needs it.
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        if "=" not in text and not text.startswith("~"):
            raise ConfigError(f"'{text}' is not a key=value override (example: nodes=2, optim.lr=1e-5)")
        try:
            parsed.extend(parser.parse_overrides([text]))
        except HydraException as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"cannot parse override '{text}': {first}") from None
    return parsed


def schema_keys(node: Any = None, prefix: str = "") -> Dict[str, bool]:
    """Every settable dotted key -> whether it is an open dict (whose sub-keys are free)."""
    if node is None:
        node = OmegaConf.structured(RunConfig)
    keys: Dict[str, bool] = {}
    for key in node.keys():
        path = f"{prefix}{key}"
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            is_open = child._metadata.object_type in (None, dict)
            keys[path] = is_open
            if not is_open:
                keys.update(schema_keys(child, path + "."))
        else:
            keys[path] = False
    return keys


def _check_key(key: str, keys: Mapping[str, bool]) -> None:
    if key in keys:
        return
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if keys.get(".".join(parts[:i])):
            return  # a sub-key of an open dict such as site.env
    raise ConfigError(f"unknown key '{key}'{did_you_mean(key, list(keys) + list(GROUPS))}")


def _load_preset(group: str, name: str):
    path = PRESETS / group / f"{name}.yaml"
    if not path.is_file():
        names = preset_names(group)
        raise ConfigError(f"unknown {group} '{name}'{did_you_mean(name, names)}; available: {', '.join(names)}")
    return OmegaConf.load(path)


def _merge(cfg: DictConfig, data, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, data)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{where}: {_omegaconf_message(exc)}") from None


def _omegaconf_message(exc: OmegaConfBaseException) -> str:
    msg = str(exc).strip().splitlines()[0]
    key = getattr(exc, "full_key", None)
    return f"'{key}': {msg}" if key else msg


def compose(overrides: Iterable[str], env: Mapping[str, str] = os.environ) -> Composed:
    overrides = tuple(overrides)
    parsed = _parse(overrides)
    choices: Dict[str, str] = {}
    rest = []
    for ov in parsed:
        key = ov.key_or_group
        if key in GROUPS and not ov.is_delete():
            value = ov.value()
            if not isinstance(value, str):
                raise ConfigError(f"{key}= takes a name, got {value!r}")
            choices[key] = value
        else:
            rest.append(ov)

    stage = choices.get("stage", "cpt")
    if stage not in STAGES:
        raise ConfigError(f"unknown stage '{stage}'{did_you_mean(stage, STAGES + ('pipeline',))}; available: "
                          f"{', '.join(STAGES)}, or pipeline (several of them in a row: jobs/pipeline.py)")
    site = choose_site(choices.get("site"), env)

    cfg = OmegaConf.structured(RunConfig)
    cfg = _merge(cfg, _load_preset("stage", stage), f"stage preset {stage}")
    model = choices.get("model", DEFAULT_MODEL)
    cfg = _merge(cfg, _load_preset("model", model), "model preset")
    # A model's settings for one stage (the tiny model's 512-token IFT rows, the paper's IFT scale).
    overlay = PRESETS / "model" / model / f"{stage}.yaml"
    if overlay.is_file():
        cfg = _merge(cfg, OmegaConf.load(overlay), f"model preset {model}/{stage}.yaml")
    cfg = _merge(cfg, {"site": load_site_file(site.name)}, f"site file {site.name}.yaml")
    if "data" in choices:
        cfg = _merge(cfg, _load_preset("data", choices["data"]), f"data preset {choices['data']}")

    keys = schema_keys()
    for ov in rest:
        key = ov.key_or_group
        if key.startswith("pipeline."):
            raise ConfigError(f"{ov.input_line}: pipeline.* settings belong to stage=pipeline (this is stage={stage})")
        _check_key(key, keys)
        try:
            if ov.is_delete():
                raise ConfigError(f"~{key}: keys of the schema cannot be deleted; set a value instead")
            OmegaConf.update(cfg, key, ov.value(), merge=True, force_add=ov.is_force_add() or ov.is_add())
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{ov.input_line}: {_omegaconf_message(exc)}") from None

    if not cfg.run:  # one name for every stage of a model: prepare, then cpt, then anneal meet in runs/<model>/
        cfg.run = cfg.model.name
    if cfg.nproc == 0:
        cfg.nproc = cfg.site.default_nproc
    if cfg.time_limit_min == 0:
        cfg.time_limit_min = cfg.site.time_limit_min
    return Composed(cfg, site, overrides)
