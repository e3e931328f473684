"""docs/config.md, generated from the schema: every key of the config with its type, its default,
the values or range the schema accepts, and what it does.

The types and choices come from the dataclasses of ``schema``; the ranges from their own checks
(each numeric key is given an out-of-range value and the rule its ConfigError states is kept, so
the page says what the code enforces); the defaults from composing ``conf/`` as ``ffrun`` does with
no overrides; the descriptions from the comment beside each key in ``conf/``, else beside the field
in the schema.

Run: ``python -m ffrun.experiment.config_doc --out docs/config.md`` (without ``--out``: stdout).
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import math
import re
import sys
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

from ffrun.errors import ConfigError
from ffrun.experiment import schema
from ffrun.experiment.protocols import PROTOCOLS

#: the YAML files whose comments describe keys, and the key prefix of their package
COMMENTED_FILES = (("config.yaml", ""), ("model/ff.yaml", "model."), ("data/mnist.yaml", "data."),
                   ("mode/unsup.yaml", ""), ("mode/bp.yaml", ""))
#: out-of-range values tried on each numeric key to read the rule its check states
PROBES = {int: (-10**9,), float: (-1e300, math.nan)}

HEADER = """# Configuration reference

Every key of ffrun's config: its type, its default, the values or range the schema accepts, and
what it does. Generated from the schema (`ffrun/experiment/schema.py`) and the comments in `conf/`
by `python -m ffrun.experiment.config_doc --out docs/config.md`; a test fails when this page is out
of date.

- Set a key on the command line (`ffrun units=2000 model.th_pos=0.2`) or in a preset
  (`conf/experiment/<name>.yaml`, chosen with `experiment=<name>`).
- The defaults are those of `ffrun` without overrides (mode `unsup`, protocol `five_digits`, data
  `mnist`); `${key}` means the value follows that key. A mode, protocol or preset may set others.
- Besides each key's own range the schema checks rules between keys (for example
  `readout_step=same_step` needs `pairing=same_step`). `ffrun` reports any broken rule in one line
  before it makes a run folder.
"""


def _yaml_comments(text: str, prefix: str) -> dict[str, str]:
    """The comment beside each key of a YAML file, by dotted key; a comment-only line indented to
    the same column as the one above continues it."""
    comments: dict[str, str] = {}
    path: list[tuple[int, str]] = []
    last_key, last_col = None, -1
    for line in text.splitlines():
        only_comment = re.match(r"^(\s+)#\s?(.*)$", line)
        if only_comment and last_key is not None and len(only_comment.group(1)) == last_col:
            comments[last_key] = f"{comments[last_key]} {only_comment.group(2).strip()}".rstrip(",")
            continue
        match = re.match(r"^(\s*)([A-Za-z_][\w]*):(?:\s*([^#]*?))?\s*(?:(#)\s?(.*))?$", line)
        if not match:
            last_key = None
            continue
        indent = len(match.group(1))
        path = [(i, k) for i, k in path if i < indent] + [(indent, match.group(2))]
        key = prefix + ".".join(k for _, k in path)
        last_key = None
        if match.group(4):
            comments.setdefault(key, match.group(5).strip().rstrip(","))
            last_key, last_col = key, line.index("#", len(match.group(1)) + len(match.group(2)))
    return comments


def _field_comments(cls: type) -> dict[str, str]:
    """The comment beside each field in the dataclass's source, or in the comment lines above it."""
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"^\s+(\w+):[^#]*(?:#\s?(.*))?$", line)
        if match and match.group(1) in cls.__dataclass_fields__:
            text = match.group(2) or " ".join(above)
            if text:
                comments[match.group(1)] = text.strip()
        above = []
    return comments


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return f"{_type_name(inner[0])} or null"
    if origin in (list, typing.List):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (dict, typing.Dict):
        return "mapping"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "choice"
    if hint is Any:
        return "any"
    return getattr(hint, "__name__", str(hint))


def _choices(hint: Any) -> list[str]:
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
            return [m.value for m in candidate]
    return []


def _probes(hint: Any) -> tuple:
    """Out-of-range values to try on a field of this type (none for choices, strings and bools)."""
    if typing.get_origin(hint) is typing.Union:        # Optional[int]: the int's probes
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) in (list, typing.List):
        return tuple([v] for v in _probes(typing.get_args(hint)[0]))
    if hint is Any:
        return PROBES[int] + PROBES[float]
    return PROBES.get(hint, ())


def _rules(cls: type, name: str, probes: tuple, wrap=lambda value: value, sub: str = "") -> list[str]:
    """What the dataclass's own check says when field ``name`` is given each probe (``wrap`` puts
    it in place, e.g. into a mapping under ``sub``): each distinct rule once, without its subject."""
    rules: list[str] = []
    for value in probes:
        try:
            cls(**{name: wrap(value)})
        except ConfigError as exc:
            message = str(exc)
            if ", got" not in message or " must " not in message:
                continue
            subject, rule = message[:message.rindex(", got")].split(" must ", 1)
            inner = subject.split(f"{name}.", 1)[1] if f"{name}." in subject else ""
            if sub:
                if inner != sub:
                    continue
                inner = ""
            rule = f"{inner} must {rule}".strip()
            if rule not in rules:
                rules.append(rule)
    return rules


def _registered(key: str) -> str:
    """The names a key takes from a registry (a loss, a goodness function), or ''."""
    losses = schema.core_losses()
    if key == "model.loss":
        return " \\| ".join(losses.LOSSES.in_order()) + ", or a list of them (one per layer)"
    if key == "model.goodness":
        return " \\| ".join(losses.GOODNESS.in_order())
    if key == "type":   # model.readouts.<name>.type: a readout node type
        registered = schema.node_types().NODE_TYPES
        return " \\| ".join(n for n in registered.in_order() if registered.get(n).role == "readout")
    for name in losses.LOSSES.names():
        for param, keyword in losses.parameter_keys(name).items():
            if key == f"model.{param}":
                return _loss_rules(name, keyword)
    return ""


def _summary(obj: Any) -> str:
    """The first paragraph of a component's docstring: its line in this page."""
    return _cell(" ".join((inspect.getdoc(obj) or "").split("\n\n")[0].split()))


def _loss_rules(name: str, keyword: str) -> str:
    """What a loss's constructor says of out-of-range values of one hyper-parameter."""
    losses = schema.core_losses()
    rules = []
    for probe in (-1e300, math.nan, 1e300):
        try:
            losses.make_loss(name, **{keyword: probe})
        except (ValueError, TypeError) as exc:
            rule = str(exc).rsplit(", got", 1)[0]
            if rule not in rules:
                rules.append(rule)
    return "; ".join(rules)


def _component_sections() -> list[str]:
    """The registered losses and goodness functions: what a config may name, and what each carries."""
    losses = schema.core_losses()
    lines = ["", "## Losses (`model.loss`, a node's `loss`)", "",
             "The registered local losses (`ffrun.core.losses.LOSSES`). A hyper-parameter is the key "
             "`<loss>_<parameter>`: model-wide under `model` where the schema has it, or in a node of "
             "`model.layers`. The metrics are the columns each FF layer with the loss logs per epoch; "
             "every one is held under `max_loss`.", "",
             "| loss | trains on | metrics | hyper-parameters | what it is |", "|---|---|---|---|---|"]
    for name in losses.LOSSES.in_order():
        cls = losses.LOSSES.get(name)
        kind = ("per-class goodness against the label (protocol competitive)" if cls.competitive else
                "aligned pairs (pairing=same_step)" if cls.needs_pairs else "positive and negative passes")
        params = [f"`{key}` (default `{_show(inspect.signature(cls).parameters[kw].default)}`; "
                  f"{_loss_rules(name, kw)})" for key, kw in losses.parameter_keys(name).items()]
        lines.append(f"| `{name}` | {kind} | {', '.join(cls.train_metrics)} | {'; '.join(params) or '-'} | "
                     f"{_summary(cls)} |")
    for title, registry in (("Goodness (`model.goodness`, a node's `goodness`)", losses.GOODNESS),
                            ("Class goodness (a node's `class_goodness`)", losses.CLASS_GOODNESS)):
        lines += ["", f"## {title}", "", "| name | what it is |", "|---|---|"]
        lines += [f"| `{name}` | {_summary(registry.get(name))} |" for name in registry.in_order()]
    return lines


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _lookup(tree: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return dataclasses.MISSING
        tree = tree[part]
    return tree


def _rows(cls: type, prefix: str, defaults: Any, comments: dict[str, str]) -> Iterator[tuple[str, ...] | str]:
    """Table rows of a dataclass's fields; a nested dataclass yields its section name (a str) and
    then its own rows."""
    hints = typing.get_type_hints(cls)
    own = _field_comments(cls)
    nested = []
    for f in dataclasses.fields(cls):
        hint, key = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(hint):
            nested.append((hint, key))
            continue
        if key == "protocol":
            continue
        value = _lookup(defaults, key)
        if value is dataclasses.MISSING:
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        allowed = (" \\| ".join(_choices(hint)) or _registered(key)
                   or "; ".join(_rules(cls, f.name, _probes(hint))))
        yield (f"`{key}`", _type_name(hint), f"`{_show(value)}`", allowed,
               _cell(comments.get(key) or own.get(f.name, "")))
        if isinstance(value, dict) and value and not any(isinstance(v, (dict, list)) for v in value.values()):
            # a flat mapping's keys (an optimizer's)
            for sub, sub_value in value.items():
                probes = (("?",) if isinstance(sub_value, str) else
                          _probes(type(sub_value)) if isinstance(sub_value, (int, float)) else ())
                rules = _rules(cls, f.name, probes, lambda v, sub=sub: {**value, sub: v}, sub)
                yield (f"`{key}.{sub}`", "", f"`{_show(sub_value)}`", "; ".join(rules),
                       _cell(comments.get(f"{key}.{sub}", "")))
    for hint, key in nested:
        yield key
        yield from _rows(hint, key + ".", defaults, comments)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| key | type | default | allowed | what it does |", "|---|---|---|---|---|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _sections(title: str, rows: Iterator[tuple[str, ...] | str]) -> list[str]:
    out, current, name = [], [], title
    for row in rows:
        if isinstance(row, str):
            if current:
                out += ["", f"## {name}", "", *_table(current)]
            current, name = [], f"`{row}`"
        else:
            current.append(row)
    if current:
        out += ["", f"## {name}", "", *_table(current)]
    return out


def _composed(overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf
    with initialize_config_module(config_module="ffrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)


def _conf_text(relative: str) -> str:
    return resources.files("ffrun.conf").joinpath(relative).read_text()


def render() -> str:
    """The whole of docs/config.md."""
    comments: dict[str, str] = {}
    for relative, prefix in COMMENTED_FILES:
        for key, text in _yaml_comments(_conf_text(relative), prefix).items():
            comments.setdefault(key, text)
    lines = HEADER.rstrip("\n").splitlines()
    lines += _sections("Top level", _rows(schema.FFRunConfig, "", _composed([]), comments))

    lines += ["", "## `model.readouts.<name>`", "",
              "A readout: a mapping under `model.readouts`. The mode sets one; add one with "
              "`'+model.readouts.<name>={type: softmax, inputs: [norm2..], optimizer: {class_name: Adam, "
              "learning_rate: 1e-3}}'`, drop one with `model.readouts.<name>=null`.",
              ""]
    lines += _table([row for row in _rows(schema.ReadoutConfig, "", {}, {}) if not isinstance(row, str)])

    lines += ["", "## `model.layers.<name>`", "",
              "A declared network: an ordered mapping of nodes, each `{type: ..., inputs: [...], ...}` "
              "(`input` is the data). `model.layers: null` builds the MLP of `num_layers` x `units`. "
              "Each registered type (`ffrun.experiment.nodes.NODE_TYPES`): its keys (required first; a node "
              "with a loss also takes that loss's hyper-parameters), the shape it takes and gives, and its role "
              "(an FF layer, a readout and its kind, or a weightless op):", "",
              "| type | required | optional | takes | gives | role | what it is |", "|---|---|---|---|---|---|---|"]
    for name in schema.node_types().NODE_TYPES.in_order():
        node = schema.node_types().NODE_TYPES.get(name)
        role = f"readout ({node.readout})" if node.readout else node.role
        lines.append(f"| `{name}` | {', '.join(node.required) or '-'} | {', '.join(node.optional) or '-'} | "
                     f"{node.takes or 'either'} | {node.gives} | {role} | {_cell(node.doc)} |")

    lines += _component_sections()

    for name, protocol in PROTOCOLS.items():
        cls = protocol.config
        protocol_comments = _yaml_comments(_conf_text(f"protocol/{name}.yaml"), "protocol.")
        intro = _yaml_intro(_conf_text(f"protocol/{name}.yaml"))
        lines += ["", f"## `protocol={name}`", "", intro, ""]
        lines += _table([row for row in _rows(cls, "protocol.", _composed([f"protocol={name}"]), protocol_comments)
                         if not isinstance(row, str)])
    return "\n".join(lines) + "\n"


def _yaml_intro(text: str) -> str:
    """The comment block at the top of a YAML file, as one paragraph."""
    intro = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        intro.append(line.lstrip("#").strip())
    return " ".join(intro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffrun.experiment.config_doc", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write here (default: stdout)")
    args = parser.parse_args(argv)
    text = render()
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
