"""Black-box attacks (HopSkipJump, Boundary, substitute training): what the harness lets them
see, how their queries are counted and budgeted, and their strength on the small trained digits
model. Contract rows: tests/test_contracts.py."""
from __future__ import annotations

import functools

import pytest
import torch

from arena import load_plugins, testing
from arena.model import QueryOracle
from arena.registry import Registry
from arena_builtins.attacks import decision, substitute

_INSTALLED = testing.registry  # the suites' own loader, before the fixture below swaps it
_PLUGINS = (("attacks-decision", decision, ("hopskipjump", "boundary")),
            ("attacks-substitute", substitute, ("substitute",)))


@functools.lru_cache(maxsize=1)
def blackbox_registry() -> Registry:
    """The installed plugins, plus these modules where their entry points are not installed yet."""
    base = _INSTALLED()
    missing = [(name, module) for name, module, ids in _PLUGINS if not set(ids) <= set(base.attacks)]
    return load_plugins(extra=missing) if missing else base


@pytest.fixture(autouse=True)
def _blackbox_plugins(monkeypatch):
    monkeypatch.setattr(testing, "registry", blackbox_registry)


@pytest.fixture(autouse=True)
def _one_thread():
    """These attacks send many small batches to a tiny model, where torch's intra-op threads only
    add synchronisation (on a busy 2-core machine, 10x the CPU time); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(attack_id: str, **params):
    return blackbox_registry().make_attack(attack_id, **params)


HSJ = {"max_iterations": 4, "init_evals": 20}
BOUNDARY = {"steps": 400, "spherical_step": 0.1, "source_step": 0.05}
SUBSTITUTE = {"rounds": 3, "epochs": 10, "inner": {"id": "pgd", "params": {"steps": 10, "rel_step_size": 0.25}}}


CASES = [("hopskipjump", HSJ, None), ("boundary", {**BOUNDARY, "steps": 30}, None),
         ("substitute", {**SUBSTITUTE, "rounds": 2}, 0.3)]


def _spy(monkeypatch, attack_id: str) -> list:
    """Record what the harness hands to the attack's ``run``."""
    cls = blackbox_registry().attacks[attack_id]
    seen, original = [], cls.run

    def run(self, model, *args):
        seen.append(model)
        return original(self, model, *args)

    monkeypatch.setattr(cls, "run", run)
    return seen


@pytest.mark.parametrize("attack_id, params, eps", CASES)
def test_run_sees_a_counting_oracle_never_the_module(monkeypatch, attack_id, params, eps):
    monkeypatch.setenv("ARENA_ISOLATE_ATTACKS", "0")  # spy on run here (tests/test_isolation.py: in its process)
    seen = _spy(monkeypatch, attack_id)
    model, (x, y) = testing.trained_model(), testing.attack_batch(12)
    result = make(attack_id, **params)(model, x, y, eps, seed=0)
    (oracle,) = seen
    assert isinstance(oracle, QueryOracle) and not isinstance(oracle, torch.nn.Module)
    assert oracle.output == "labels"
    assert torch.equal(result.queries, oracle.counts) and int(result.queries.sum()) > 0


@pytest.mark.parametrize("attack_id, params, eps, budget", [
    ("hopskipjump", {"max_iterations": 50}, None, 150),
    ("hopskipjump", {"max_iterations": 50, "norm": "linf"}, None, 90),
    ("boundary", {"steps": 500}, None, 40),
    ("substitute", {**SUBSTITUTE, "rounds": 4}, 0.3, 3),
])
def test_stops_itself_within_the_query_budget(attack_id, params, eps, budget):
    model, (x, y) = testing.trained_model(), testing.attack_batch(16)
    result = make(attack_id, max_queries=budget, **params)(model, x, y, eps, seed=0)
    assert int(result.queries.max()) <= budget
    assert int(result.queries.max()) >= 0.75 * budget, "the budget should be (mostly) spent"
    if attack_id != "substitute":
        assert bool(result.success.any())


def test_hopskipjump_distances_shrink_with_iterations():
    model, (x, y) = testing.trained_model(), testing.attack_batch(24)
    short = make("hopskipjump", max_iterations=1, init_evals=20)(model, x, y, seed=0)
    long = make("hopskipjump", max_iterations=8, init_evals=20)(model, x, y, seed=0)
    assert bool(short.success.all()) and bool(long.success.all())
    assert float(long.distance.median()) < 0.9 * float(short.distance.median())


class _LinearOracle:
    """A labels-only oracle of a linear boundary through x = 0.5 with normal ``w`` (label 0 on
    the side ``w`` points to), recording each call's row count and the samples it serves."""

    def __init__(self, w: torch.Tensor, n: int) -> None:
        self.w, self.budget, self.calls = w, None, []
        self.counts = torch.zeros(n, dtype=torch.long)

    def __call__(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        self.calls.append((rows.shape[0], set(index.tolist())))
        self.counts += torch.bincount(index, minlength=self.counts.numel())
        return ((rows.flatten(1) - 0.5) @ self.w <= 0).long()


def test_hopskipjump_streams_all_probes_in_full_oracle_calls_and_finds_the_normal():
    """The probes of all samples go out in calls of exactly ``chunk`` rows (the last excepted),
    a call serving several samples, so that an isolated attacker pays few pipe round trips; the
    baseline-corrected estimate still points along the boundary's normal."""
    torch.manual_seed(0)
    d, evals = 24, torch.tensor([400, 300, 500])
    w = torch.randn(d)
    r = torch.randn(3, d)
    cur = 0.5 + 0.05 * (r - (r @ w / w.dot(w)).unsqueeze(1) * w)  # on the boundary
    oracle = _LinearOracle(w, 3)
    decide = decision.Decider(oracle, torch.ones(3, dtype=torch.long), None, chunk=64)
    index = torch.arange(3)
    direction = decision.estimate_directions(decide, cur.view(3, 1, 4, 6), index, evals,
                                             torch.full((3,), 0.01), decision.Norm.L2)
    sizes = [rows for rows, _ in oracle.calls]
    assert len(sizes) == -(-1200 // 64) and set(sizes[:-1]) == {64} and sizes[-1] == 1200 % 64
    assert any(len(samples) > 1 for _, samples in oracle.calls)
    assert torch.equal(oracle.counts, evals)
    cos = direction.flatten(1) @ w / w.norm()
    assert (cos > 0.85).all(), cos


def test_hopskipjump_sizes_its_oracle_calls_by_the_input_on_a_cpu(monkeypatch):
    """256 rows, fewer past 1,024 features (about 1 MiB of input, a power of two of rows), where
    512-row calls made the model's activation buffers fault in afresh at every call."""
    assert decision.default_chunk(torch.device("cpu"), 28 * 28) == 256
    assert decision.default_chunk(torch.device("cpu"), 8 * 8) == 256
    assert decision.default_chunk(torch.device("cpu"), 32 * 32) == 256
    assert decision.default_chunk(torch.device("cpu"), 32 * 32 + 1) == 128
    assert decision.default_chunk(torch.device("cpu"), 3 * 32 * 32) == 64
    assert decision.default_chunk(torch.device("cpu"), 3 * 224 * 224) == 16
    monkeypatch.setenv("ARENA_ISOLATE_ATTACKS", "0")  # to watch the model's batches here
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    sizes = []
    model.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    result = make("hopskipjump", max_iterations=2, init_evals=100)(model, x, y, seed=0)
    assert bool(result.success.all())
    assert max(sizes) == 256 and sizes.count(256) >= 3  # 800 first-iteration probes: 3 full calls


def _white_box_median_l2(model, x, y) -> float:
    """Median minimal L2 of DeepFool when registered, else of a grid search over PGD-L2's ε."""
    deepfool = blackbox_registry().attacks.get("deepfool")
    if deepfool is not None:
        attack = deepfool(**({"norm": "l2"} if "norm" in deepfool.Config.model_fields else {}))
        if attack.minimal and attack.threat_norm.value == "l2":
            return float(attack(model, x, y, seed=0).distance.median())
    found = torch.full((x.shape[0],), float("inf"))
    for eps in torch.arange(0.1, 3.01, 0.1).tolist():
        result = make("pgd", norm="l2", steps=20)(model, x, y, eps, seed=0)
        found = torch.where(result.success & found.isinf(), torch.tensor(eps), found)
    return float(found.median())


def test_hopskipjump_is_close_to_white_box_minimal_distances():
    model, (x, y) = testing.trained_model(), testing.attack_batch(24)
    hsj = make("hopskipjump", max_iterations=25, init_evals=20)(model, x, y, seed=0)
    assert float(hsj.distance.median()) <= 1.5 * _white_box_median_l2(model, x, y)


def test_hopskipjump_targeted_starts_from_the_target_class():
    model, (x, y) = testing.trained_model(), testing.attack_batch(16)
    targets = (y + 1) % 10
    result = make("hopskipjump", **HSJ, init_size=20)(model, x, y, targets=targets, seed=0)
    assert float(result.success.float().mean()) >= 0.8
    with torch.no_grad():
        assert torch.equal(model(result.x_adv[result.success]).argmax(1), targets[result.success])


def test_substitute_transfers_and_counts_exactly_the_labelled_points():
    model, (x, y) = testing.trained_model(), testing.attack_batch(20)
    result = make("substitute", **SUBSTITUTE, seed_size=16)(model, x, y, 0.4, seed=0)
    assert float(result.success.float().mean()) > 0
    assert int(result.queries.sum()) == 16 * 2 ** (SUBSTITUTE["rounds"] - 1)
    assert int((result.queries > 0).sum()) == 16  # each point counted for the sample it came from
    reservoir = make("substitute", **SUBSTITUTE, seed_size=16, reservoir=5, reservoir_after=1)
    assert int(reservoir(model, x, y, 0.4, seed=0).queries.sum()) == 16 * 2 + 5


def test_substitute_rejects_a_mismatched_inner_attack():
    with pytest.raises(Exception, match="did you mean 'pgd'"):
        make("substitute", inner="pgdd")
    with pytest.raises(Exception, match="norm linf"):
        make("substitute", inner={"id": "pgd", "params": {"norm": "l2"}})
