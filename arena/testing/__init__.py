"""Contract test suites for plugin authors (and for every built-in plugin).

Subclass one in a pytest file and name your plugin::

    from arena.testing import AttackContract

    class TestMine(AttackContract):
        attack_id = "mine"
        params = {"steps": 5}

The suites use a small CNN trained once per process on the embedded ``digits`` data (a few
seconds on a CPU), so they run anywhere without downloads. What they build is cached per process
under the plugin's id and config: a defense is trained once for all the checks of its suite (and
once more to check that the same seed reproduces it), and an attack runs once for the checks
that only read its result.
"""
from arena.testing.attacks import AttackContract
from arena.testing.defenses import DefenseContract, Entrant, build_entrant, cached_entrant, contract_config
from arena.testing.fixtures import (DEFAULT_EPS, QUICK, attack_batch, built_once, canonical, contract_data, digits,
                                    reference, registry, trained_model, using_registry)
from arena.testing.kinds import ArchitectureContract, BackendContract, DatasetContract

__all__ = ["DEFAULT_EPS", "QUICK", "ArchitectureContract", "AttackContract", "BackendContract", "DatasetContract",
           "DefenseContract", "Entrant", "attack_batch", "build_entrant", "built_once", "cached_entrant", "canonical",
           "contract_config", "contract_data", "digits", "reference", "registry", "trained_model",
           "using_registry"]
