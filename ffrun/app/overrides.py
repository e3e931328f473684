"""Checking command-line overrides before Hydra runs: a typo, an unknown choice, a wrong type or a
value out of range becomes one line naming the key and the fix, before any folder is made."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

_PLUGIN_EXTRAS = {"hydra/sweeper/optuna": "optuna", "hydra/launcher/joblib": "sweep",
                  "hydra/launcher/submitit_local": "sweep", "hydra/launcher/submitit_slurm": "sweep"}


#: config groups every run composes: deleting one (``~model``) would leave the schema's bare
#: defaults, e.g. a 4 x 500 network whatever ``units`` says
REQUIRED_GROUPS = ("data", "model", "protocol", "mode")


def _group_options(group: str) -> list[str]:
    from importlib.resources import files
    return sorted(f.name[:-5] for f in files("ffrun.conf").joinpath(group).iterdir() if f.name.endswith(".yaml"))


#: experiment presets renamed to say whose result they reproduce (old prefix -> new prefix); the old
#: names stay as alias files in conf/experiment for one release
RENAMED_PRESETS = {"seed_r": "rmwkwok_r"}


def renamed_preset_notes(args: list[str]) -> list[str]:
    """One line per old preset name among the ``experiment=`` values of ``args``, naming the new one."""
    notes = []
    for arg in args:
        key, _, values = arg.lstrip("+").partition("=")
        for value in values.split(",") if key == "experiment" else []:
            old = next((o for o in RENAMED_PRESETS if value.startswith(o)), None)
            if old is not None:
                new = RENAMED_PRESETS[old] + value[len(old):]
                notes.append(f"experiment={value} is an old name, kept for one release: use experiment={new}")
    return notes


def _job_overrides(args: list[str]) -> list[list[str]]:
    """Override lists that cover the jobs of ``args`` for checking: the first value of every sweep,
    then each other value of each sweep in turn (one composition per value, not per job: a 4 x 4
    grid is checked with 7, not 16)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    parser = OverridesParser.create()
    first: list[str] = []
    others: list[tuple[int, list[str]]] = []
    for i, arg in enumerate(args):
        override = parser.parse_overrides([arg])[0]
        if not override.is_sweep_override():
            first.append(arg)
            continue
        key = override.get_key_element()
        value = override.value()
        if hasattr(value, "start"):          # interval(a, b): Optuna draws inside it
            first.append(f"{key}={value.start}")
            continue
        values = list(override.sweep_string_iterator())
        first.append(f"{key}={values[0]}")
        # every value is checked (numbers too: a NaN or a zero batch size must not wait for its job)
        others.append((i, [f"{key}={v}" for v in values[1:]]))
    jobs = [first]
    for i, variants in others:
        jobs += [first[:i] + [v] + first[i + 1:] for v in variants]
    return jobs


def _config_keys(overrides: list[str]) -> list[str]:
    """Every dotted key of the config composed with ``overrides`` (Hydra's own section left out)."""
    from hydra import compose, initialize_config_module
    with initialize_config_module(config_module="ffrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    keys: list[str] = []

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, DictConfig):
            for key in node.keys():
                name = f"{prefix}{key}"
                keys.append(name)
                walk(node._get_node(key), name + ".")
    walk(cfg, "")
    return keys


def override_problem(args: list[str]) -> str | None:
    """One line saying why Hydra would refuse these command-line arguments, or None.

    Hydra's own report of a bad override spans five to twenty lines (the struct error, its config
    search path, every option of the group); the user needs the key, the nearest valid spelling and
    how to add a key on purpose. Flags other than ``-m`` are left to Hydra."""
    from hydra.errors import OverrideParseException
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return None
    overrides = [a for a in args if not a.startswith("-")]
    removed = next((o for o in overrides if o.lstrip("~").split("=", 1)[0] in REQUIRED_GROUPS and o.startswith("~")), None)
    if removed is not None:
        group = removed.lstrip("~").split("=", 1)[0]
        return (f"{removed!r} removes the config group {group!r}, which every run needs; choose one of its "
                f"options instead ({group}={'|'.join(_group_options(group))})")
    try:
        jobs = _job_overrides(overrides)
    except OverrideParseException as exc:
        bad = next((o for o in overrides if _unparsable(o)), " ".join(overrides))
        return f"cannot parse the override {bad!r}: {str(exc).splitlines()[0]}"
    for single in jobs:
        problem = _compose_problem(single)
        if problem is not None:
            return problem
    return None


def _compose_problem(single: list[str]) -> str | None:
    """One line saying why composing the overrides of one job fails, or None."""
    import difflib

    from hydra import compose, initialize_config_module
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError
    from omegaconf.errors import ValidationError

    from ffrun.errors import FFRunError
    from ffrun.experiment.schema import check_before_run, typed
    try:
        with initialize_config_module(config_module="ffrun.conf", version_base="1.3"):
            cfg = compose("config", overrides=single, return_hydra_config=True)
        spec = typed(cfg)      # ranges and cross-key rules: the same check every run makes at its start
        if not spec.resume:    # a resumed run has its own saved config: run/resume.py checks that one
            check_before_run(spec)
    except FFRunError as exc:
        return str(exc)
    except MissingConfigException as exc:
        group, _, choice = str(exc.missing_cfg_file or "").rpartition("/")
        # a protocol's <name>_schema option is its config's types, not a choice of its own
        options = [o for o in exc.options or [] if not (group == "protocol" and o.endswith("_schema"))]
        near = difflib.get_close_matches(choice, options, n=1)
        hint = f"did you mean {group}={near[0]}? " if near else ""
        if not near and group in ("protocol", "data"):
            hint = f"a plugin's {group} needs its module in plugins=[...] (docs/extending.md); "
        extra = _PLUGIN_EXTRAS.get(f"{group}/{choice}")
        if extra:   # a Hydra plugin's config group appears only once the plugin is installed
            hint = f"its Hydra plugin is not installed (pip install 'ffrun[{extra}]'); "
        return f"no config {choice!r} in group {group!r}; {hint}choices: {', '.join(options)}"
    except Exception as exc:  # noqa: BLE001 - Hydra raises several types; each gets one line
        cause = exc.__cause__
        if isinstance(cause, ValidationError) and not isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
            # the schema refused a value: "splitting=bogus: Invalid value 'bogus', expected one of [...]"
            key = str(getattr(cause, "full_key", "") or "")
            given = next((o for o in single if o.lstrip("+~").split("=", 1)[0] == key), key)
            return f"{given}: {str(cause).splitlines()[0]}"
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and getattr(cause, "full_key", None):
            key = str(cause.full_key)
            given = next((o for o in single if o.lstrip("+~").split("=", 1)[0] == key), key)
            known = _keys_without(single, given)
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]}?" if near else ""
            value = given.split("=", 1)[1] if "=" in given else "..."
            return f"unknown config key {key!r}{hint} (to add a new key on purpose: +{key}={value})"
        return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return None


def _unparsable(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    try:
        OverridesParser.create().parse_overrides([override])
    except Exception:  # noqa: BLE001
        return True
    return False


def _keys_without(overrides: list[str], bad: str) -> list[str]:
    """The config's keys, composed without the offending override (or, failing that, without any)."""
    for attempt in ([o for o in overrides if o != bad and not o.startswith("hydra")], []):
        try:
            return _config_keys(attempt)
        except Exception:  # noqa: BLE001 - a second bad override: fall back to the defaults
            continue
    return []


#: overrides that choose YAML files, which may list plugins; the others cannot, and may name a
#: plugin's protocol or dataset that does not compose until the plugin is loaded
_PLUGIN_SOURCES = ("plugins", "experiment", "debug", "hparams_search", "hydra.searchpath")


def protocol_name_as_choice(args: list[str]) -> list[str]:
    """``protocol.name=<name>`` as ``protocol=<name>``: the protocol's keys are typed by its own
    config, which only choosing the option composes (a plugin's protocol has no other key to set)."""
    return [f"protocol={a.split('=', 1)[1]}" if a.startswith("protocol.name=") else a for a in args]


def requested_plugins(args: list[str]) -> list[str]:
    """The ``plugins`` of every job of ``args``: a ``plugins=[...]`` override, else the composed
    config's list (config.yaml, an experiment preset), else those of the run a ``resume=`` continues."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        jobs = _job_overrides(overrides)
    except Exception:  # noqa: BLE001 - an override that does not parse: override_problem reports it
        return []
    found: list[str] = []
    composed: set[tuple[str, ...]] = set()
    for job in jobs:
        given = [o for o in job if o.lstrip("+").split("=", 1)[0] == "plugins"]
        if given:
            value = OverridesParser.create().parse_overrides(given[-1:])[0].value()
            found += [str(v) for v in (value if isinstance(value, list) else [value])]
            continue
        picked = tuple(o for o in job if o.lstrip("+~").split("=", 1)[0] in _PLUGIN_SOURCES)
        if picked in composed:
            continue
        composed.add(picked)
        try:
            with initialize_config_module(config_module="ffrun.conf", version_base="1.3"):
                found += list(compose("config", overrides=list(picked)).plugins or [])
        except Exception:  # noqa: BLE001 - the full check composes again and names the problem
            continue
    resumed = next((o.split("=", 1)[1].strip() for o in overrides if o.startswith("resume=")), "")
    saved = Path(resumed).expanduser() / ".hydra" / "config.yaml"
    if resumed not in ("", "null") and saved.is_file():
        try:
            found += list(OmegaConf.load(saved).get("plugins") or [])
        except Exception:  # noqa: BLE001 - a damaged saved config: resume_problem names it
            pass
    return list(dict.fromkeys(found))


def plugin_problem(args: list[str]) -> str | None:
    """Load the installed plugins and those ``args`` ask for (:func:`requested_plugins`); one line
    saying why one cannot be loaded, or None."""
    from ffrun.errors import FFRunError
    from ffrun.experiment.plugins import load_plugins
    try:
        load_plugins(requested_plugins(args))
    except FFRunError as exc:
        return str(exc)
    return None
