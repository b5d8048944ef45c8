"""``arena new-plugin NAME``: write a pip-installable third-party plugin package skeleton.

The skeleton holds one working attack (R+FGSM in L∞), registered through the ``arena``
entry-point group exactly as the built-ins are, and a test file that runs the arena's
:class:`arena.testing.AttackContract` against it. See docs/plugins.md for the whole guide.
"""
from __future__ import annotations

import keyword
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template

from arena.errors import ArenaError, ConfigError

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*$")
RESERVED_PACKAGES = {"arena", "arena_builtins", "plugins", "tests"}

PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "Adversarial arena plugin: the $attack_id attack"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["adversarial-arena"]

[project.optional-dependencies]
test = ["pytest>=7.4"]

# The arena finds plugins through this entry-point group; the key ("$dist") is the plugin
# name shown by `arena plugins list` and accepted by ARENA_DISABLE_PLUGINS.
[project.entry-points.arena]
$dist = "$pkg.plugin"

[tool.setuptools.packages.find]
include = ["$pkg*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
''')

INIT = Template('''\
"""$dist: a plugin package for the adversarial arena (attack id "$attack_id")."""

__version__ = "0.1.0"
''')

PLUGIN = Template('''\
"""The attacks of $dist, registered with the arena through the ``arena`` entry point.

``arena new-plugin`` wrote an example attack here: replace it with your own, keep the rules
(kebab-case ``id``, a docstring citing the paper, a nested ``Config``) and run the contract
tests with ``pytest``.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from arena import hookimpl
from arena.attack import FixedBudgetAttack, RunOutput
from arena.plugin import PluginConfig
from arena.threat import Knowledge, Norm


class $cls(FixedBudgetAttack):
    """R+FGSM: a random sign step, then a gradient sign step, in L∞ (Tramèr et al., "Ensemble
    Adversarial Training: Attacks and Defenses", ICLR 2018, eq. 7).

    A random step of size alpha = ``rel_random_step`` * eps leaves the sharp curvature of the
    loss right at the data point; an FGSM step of the remaining eps - alpha follows. The paper
    uses alpha = eps / 2. The harness projects the result onto the ε-ball and [0, 1] and judges
    success itself; ``run`` only has to craft the inputs.
    """

    id: ClassVar[str] = "$attack_id"
    norm: ClassVar[Norm] = Norm.LINF
    knowledge: ClassVar[Knowledge] = Knowledge.WHITE_BOX
    supports_targeted: ClassVar[bool] = True

    class Config(PluginConfig):
        rel_random_step: float = Field(0.5, ge=0, lt=1, description="random step as a share of eps")

    def run(self, model, x, y, eps, targets):
        alpha = self.config.rel_random_step * eps
        start = (x + alpha * torch.randn_like(x).sign()).clamp(0, 1)
        with torch.enable_grad():
            start.requires_grad_(True)
            logits = model(start)
            if targets is None:  # untargeted: ascend the loss of the true label
                loss = F.cross_entropy(logits, y, reduction="sum")
            else:  # targeted: descend the loss of the target label
                loss = -F.cross_entropy(logits, targets, reduction="sum")
            (grad,) = torch.autograd.grad(loss, start)
        x_adv = (start.detach() + (eps - alpha) * grad.sign()).clamp(0, 1)
        queries = torch.ones(x.shape[0], dtype=torch.long, device=x.device)  # one gradient each
        return RunOutput(x_adv, queries)


@hookimpl
def arena_register_attacks(register):
    register($cls)
''')

TESTS = Template('''\
"""The arena's contract tests, run against the installed $dist plugin."""
from arena.testing import AttackContract, registry


class Test$cls(AttackContract):
    attack_id = "$attack_id"
    params = {"rel_random_step": 0.5}


def test_registered_through_the_entry_point():
    owner = registry().owners[("attacks", "$attack_id")]
    assert owner.distribution.lower().replace("_", "-") == "$dist_lower"
''')

README = Template('''\
# $dist

A plugin package for the adversarial arena. It registers the attack `$attack_id`
(R+FGSM in L∞, an example written by `arena new-plugin`) through the `arena` entry-point group.

## Steps

1. Install it into the environment that has the arena, with its test extra:

   ```sh
   pip install -e ".[test]"
   ```

2. Check that the arena finds it: `arena plugins list` shows `$attack_id` with the
   distribution `$dist`.

3. Run the arena's contract tests against it (a few seconds on a CPU; a small CNN is trained
   once on the embedded digits data):

   ```sh
   pytest
   ```

4. Make it yours: edit `$pkg/plugin.py` (the class `$cls`). Keep a kebab-case `id`, a
   docstring citing the paper, a nested `Config(PluginConfig)` for every parameter, and
   implement `run(self, model, x, y, eps, targets)` returning the adversarial inputs (or a
   `RunOutput` with query counts). The harness validates inputs, puts the model in eval mode,
   projects onto the ε-ball and [0, 1], and judges success.

5. Add more classes with `register(...)` in the same hook, or implement the other hooks
   (`arena_register_defenses`, `arena_register_datasets`, `arena_register_architectures`,
   `arena_register_backends`), each with a matching contract suite from `arena.testing`.

6. Use it in a tournament file like any built-in:

   ```toml
   [[attacks]]
   id = "$attack_id"
   params = { rel_random_step = 0.5 }
   budgets = [0.1, 0.3]
   ```

To switch the plugin off without uninstalling it: `ARENA_DISABLE_PLUGINS=$dist`.
''')


@dataclass(frozen=True)
class Names:
    """Every name the skeleton derives from NAME."""

    dist: str
    pkg: str
    attack_id: str
    cls: str


def derive_names(name: str) -> Names:
    """Validate NAME and derive the distribution, package, attack id and class names."""
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"invalid plugin name {name!r}: use letters, digits and single dashes, "
                          "starting with a letter (e.g. arena-jitter)")
    pkg = name.lower().replace("-", "_")
    if pkg in RESERVED_PACKAGES or keyword.iskeyword(pkg) or pkg in sys.stdlib_module_names:
        raise ConfigError(f"invalid plugin name {name!r}: its package '{pkg}' would shadow "
                          f"another module; choose another name (e.g. arena-{name.lower()})")
    lower = name.lower()
    attack_id = lower[len("arena-"):] if lower.startswith("arena-") else lower
    camel = "".join(part.capitalize() for part in attack_id.split("-"))
    cls = f"{camel}Attack" if camel[0].isalpha() else f"Attack{camel}"
    return Names(dist=name, pkg=pkg, attack_id=attack_id, cls=cls)


def _check_target(target: Path) -> None:
    """Refuse to write into an existing file or non-empty folder."""
    if target.is_file() or (target.is_dir() and any(target.iterdir())):
        raise ConfigError(f"{target} already exists and is not empty; "
                          "choose another name or --dir")


def _check_id_free(attack_id: str) -> None:
    """Refuse an id that an installed plugin already registers (it would break every load)."""
    try:
        from arena.registry import load_plugins

        registry = load_plugins()
    except ArenaError:  # a broken installed plugin is not this command's business
        return
    if attack_id in registry.attacks:
        owner = registry.owners[("attacks", attack_id)]
        raise ConfigError(f"attack id '{attack_id}' is already registered by {owner}; "
                          "choose another name")


def render(names: Names) -> dict[str, str]:
    """The skeleton's files, by path relative to the package folder."""
    values = {**vars(names), "dist_lower": names.dist.lower()}
    return {
        "pyproject.toml": PYPROJECT.substitute(values),
        "README.md": README.substitute(values),
        f"{names.pkg}/__init__.py": INIT.substitute(values),
        f"{names.pkg}/plugin.py": PLUGIN.substitute(values),
        "tests/test_plugin.py": TESTS.substitute(values),
    }


def scaffold(name: str, directory: Path) -> Path:
    """Write the plugin package for NAME into ``directory/NAME`` and return that folder.

    Raises :class:`arena.ConfigError` for an invalid name, an existing non-empty folder, or an
    attack id that an installed plugin already uses.
    """
    names = derive_names(name)
    target = Path(directory) / name
    _check_target(target)
    _check_id_free(names.attack_id)
    files = render(names)
    try:
        for rel, text in files.items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target
