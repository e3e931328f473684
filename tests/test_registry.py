"""The generic registry: names are unique, unknown names list the known ones, contracts run at
registration. Each kind's registry (losses, node types, ...) has its own contract tests."""
from __future__ import annotations

import pytest

from ffrun.errors import ConfigError, RegistryError
from ffrun.registry import Registry


def test_register_get_and_list():
    reg: Registry = Registry("widget")

    @reg.register("b")
    class B:
        pass

    @reg.register()
    class A:
        name = "a"

    assert reg.get("a") is A and reg.get("b") is B
    assert reg.names() == ("a", "b") and "a" in reg and len(reg) == 2
    reg.add("a", A)   # the same object again (a module imported twice) is not a clash


def test_a_taken_name_is_refused_naming_both_owners():
    reg: Registry = Registry("loss")
    reg.add("cwc", int)
    with pytest.raises(RegistryError, match=r"loss 'cwc' from builtins.float clashes with builtins.int"):
        reg.add("cwc", float)
    assert reg.get("cwc") is int


def test_an_unknown_name_lists_the_known_ones_and_is_a_config_error():
    reg: Registry = Registry("protocol")
    reg.add("split", int)
    reg.add("five_digits", float)
    with pytest.raises(ConfigError, match=r"unknown protocol 'splt'; known: five_digits, split"):
        reg.get("splt")


@pytest.mark.parametrize("name", [None, "", "two words", 3])
def test_a_name_must_be_an_identifier(name):
    with pytest.raises(RegistryError, match="must be an identifier"):
        Registry("loss").add(name, int)


def test_the_contract_runs_at_registration():
    reg: Registry = Registry("loss", contract=lambda name, obj: None if hasattr(obj, "metrics") else
                             "it has no `metrics` (the names of the values it logs)")
    with pytest.raises(RegistryError, match=r"loss 'bad' from builtins.int: it has no `metrics`"):
        reg.add("bad", int)
    assert "bad" not in reg
