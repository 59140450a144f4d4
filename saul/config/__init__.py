"""A run's configuration, composed and checked on the login side (torch-free).

    schema.py      typed dataclasses: every key, its type, default and meaning
    compose.py     key=value overrides (Hydra grammar) onto schema < stage < model < site presets
    sites.py       site files (site_configs/*.yaml) and which site applies
    validate.py    range, cross-field and input checks: one ConfigError line each
    model_size.py  parameter counts and per-rank memory, for the plan and the fit check
    errors.py      ConfigError and did-you-mean
    presets/       stage and model presets (YAML)
"""
