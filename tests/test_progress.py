"""Following a run: the cost-weighted ETA, one line per finished task off a terminal, --quiet,
--verbose and --log of ``arena run``; ``arena runs``; ``arena plugins show`` and ``list --kind``."""
from __future__ import annotations

import json
import re
import types
import zipfile
from typing import ClassVar

import pytest
from click.testing import CliRunner

import arena
from arena import cli as arena_cli
from arena.attack import FixedBudgetAttack
from arena.tournament.progress import ANY, Estimator, Output, Progress, Task, attack_units, match_task, match_units

TINY = """
name = "tiny"
dataset = "digits"
architecture = "digits-cnn"
samples = 20
[training]
epochs = 1
[[defenses]]
id = "standard"
[[defenses]]
id = "gda"
params = { copies = 2 }
[[attacks]]
id = "fgsm"
budgets = [0.1, 0.2]
[[attacks]]
name = "pgd-l2"
id = "pgd"
params = { norm = "l2", steps = 3 }
budgets = [1.0]
"""
TASKS = {"training standard", "training gda", "match fgsm vs standard", "match pgd-l2 vs standard",
         "match fgsm vs gda", "match pgd-l2 vs gda"}
LINE = re.compile(r"^\[(\d+)/(\d+) (\d\d:\d\d)\] (training \S+|match \S+ vs \S+) \((.*?)\): (.*)$")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ the estimate

def test_cheap_tasks_first_do_not_make_an_expensive_remainder_look_nearly_done():
    clock = Clock()
    est = Estimator(clock)
    for i in range(10):
        est.add(Task(("cheap", i), "match", f"cheap {i}", 10, ("match:fgsm", "match", ANY)))
    for i in range(2):
        est.add(Task(("big", i), "match", f"big {i}", 1000, ("match:pgd", "match", ANY)))
    assert est.remaining() is None  # nothing measured yet
    for i in range(10):
        clock.now += 0.1
        est.finish(("cheap", i))
    # 1 s for 100 units: the two 1000-unit matches need 20 s, not the 0.2 s of "two more tasks"
    assert est.remaining() == pytest.approx(20.0)
    clock.now += 1.0  # the time since the last finish is spent already
    assert est.remaining() == pytest.approx(19.0)
    clock.now += 29.0
    est.finish(("big", 0))  # 30 s for 1000 units: its own attack now calibrates the other one
    assert est.remaining() == pytest.approx(30.0)
    clock.now += 30.0
    est.finish(("big", 1))
    assert est.remaining() == 0.0


def test_each_kind_is_calibrated_by_its_own_finished_tasks():
    clock = Clock()
    est = Estimator(clock)
    for i in range(2):
        est.add(Task(("training", i), "training", f"t{i}", 1000, ("training", ANY)))
    for i in range(3):
        est.add(Task(("match", i), "match", f"m{i}", 100, ("match", ANY)))
    for i in range(2):
        clock.now += 10.0
        est.finish(("training", i))
    assert est.remaining() == pytest.approx(3.0)  # matches priced at the trainings' 0.01 s per unit
    clock.now += 5.0
    est.finish(("match", 0))
    assert est.remaining() == pytest.approx(10.0)  # at the matches' own 0.05 s per unit
    clock.now += 60.0
    est.finish(("match", 1), calibrate=False, failed=True)  # a failure says nothing of the cost
    assert est.remaining() == pytest.approx(5.0)


def test_expected_costs_follow_the_attack_and_defense_configs(registry):
    from arena.tournament.plan import parse_tournament
    from arena.tournament.progress import training_units

    fgsm, pgd = registry.make_attack("fgsm"), registry.make_attack("pgd", steps=20)
    assert attack_units(pgd) == 20 * attack_units(fgsm)
    assert attack_units(registry.make_attack("pgd", steps=20, restarts=3)) == 3 * attack_units(pgd)
    assert attack_units(registry.make_attack("square", max_queries=300)) == pytest.approx(100)
    plan = parse_tournament({
        "name": "costs", "dataset": "digits", "architecture": "digits-cnn", "samples": 10,
        "training": {"epochs": 2},
        "defenses": [{"id": "standard"}, {"id": "gda", "params": {"copies": 4}},
                     {"id": "adversarial-training", "params": {"attack": {"id": "pgd", "params": {"steps": 5}}}}],
        "attacks": [{"id": "pgd", "params": {"steps": 10}, "budgets": [0.1, 0.2, 0.3]},
                    {"id": "deepfool", "params": {"steps": 10}, "budgets": [0.1, 0.2, 0.3]}]}, registry)
    standard, gda, adversarial = (training_units(d, 1000, 10) for d in plan.defenses)
    assert standard == 10 + 2 * 1000 and gda == 10 + 2 * 1000 * 5 and adversarial == 10 + 2 * 1000 * 6
    fixed, minimal = plan.attacks
    assert match_units(fixed, fixed.budgets, 10) == 10 * (3 * 10 + 1)  # one call per budget
    assert match_units(minimal, minimal.budgets, 10) == 10 * (10 + 1)  # one call serves every budget


class _Plan:
    def __init__(self, label: str) -> None:
        self.label = self.id = label
        self.view = types.SimpleNamespace(surrogate=None)


class _Row:
    def __init__(self, budget: float, robust: float) -> None:
        self.budget, self.status, self.robust_accuracy, self.error = budget, "ok", robust, None
        self.success_rate, self.mean_distance, self.mean_queries, self.wall_seconds = 0.5, None, None, 0.25


def _lines(parallel: bool) -> list[str]:
    """The lines of two trainings and two matches, with every job taken at once (Ray) or one
    after the other (local, inline)."""
    import io

    clock, stream = Clock(), io.StringIO()
    attack = _Plan("pgd")
    todo = {"a": [(attack, (0.1,))], "b": [(attack, (0.1,))]}
    trainings = [Task(("training", x), "training", x, 100, ("training", ANY), "(training-time)") for x in "ab"]
    with Progress(Output(mode="auto"), trainings, todo, lambda label, a, b: 10.0, stream=stream,
                  clock=clock) as progress:
        for kind, jobs in (("training", [("a",), ("b",)]), ("match", [(("a", attack),), (("b", attack),)])):
            fed = progress.feed(kind, jobs)
            for job in (list(fed) if parallel else fed):
                clock.now += 1.0
                key = job[0]
                if kind == "training":
                    row = {"clean_accuracy": 0.9, "train_seconds": 1.0}
                    progress.trained(key, types.SimpleNamespace(model_row=row))
                else:
                    progress.matched(key[0], key[1], types.SimpleNamespace(rows=[_Row(0.1, 0.415)]))
    return stream.getvalue().splitlines()


def test_every_executor_gives_the_same_lines():
    lines = _lines(parallel=False)
    assert lines == _lines(parallel=True)
    assert lines[0] == "[1/4 00:01] training a (training-time): ok, clean 90.0%, 1.0 s, ETA 00:01"
    assert lines[-1] == "[4/4 00:04] match pgd vs b (eps=0.1): ok, robust 41.5%, 0.2 s"
    assert len(lines) == 4  # a stream that is not a terminal: one line per finished task, no bar


def test_match_task_names_and_budgets():
    task = match_task("gda", _Plan("pgd-linf"), (0.1, float("inf")), 5.0)
    assert task.name == "pgd-linf vs gda" and task.detail == "(eps=0.1, inf)"


# ------------------------------------------------------------------ arena run

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models")  # shared: later runs take the models from it


def _run(registry, tmp_path, cache, *options, text=TINY, db="r.db"):
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return CliRunner().invoke(arena_cli.cli, ["run", str(path), "--db", str(tmp_path / db), "--executor", "inline",
                                              "--cache-dir", str(cache), *options],
                              obj=arena_cli.CliState(registry))


def _tasks(lines):
    return [m for m in map(LINE.match, lines) if m]


def test_off_a_terminal_every_training_and_match_has_a_line(registry, tmp_path, cache):
    result = _run(registry, tmp_path, cache)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    tasks = _tasks(lines)
    assert {m[4] for m in tasks} == TASKS and len(tasks) == len(TASKS)
    assert [int(m[1]) for m in tasks] == list(range(1, 7)) and {m[2] for m in tasks} == {"6"}
    for m in tasks:
        assert m[6].startswith("ok"), m[0]
        if m[4].startswith("match"):
            assert re.search(r"robust \d+\.\d%", m[6]) and m[6].split(", ")[-1] != "robust"
    assert lines[-1] == f"results: {tmp_path / 'r.db'}" and len(lines) == 7  # nothing else, no bar
    assert "tiny on digits (run 1" in result.stdout  # the leaderboard on stdout, the progress not
    assert "[1/6" not in result.stdout and "tiny on digits" not in result.stderr


def test_quiet_prints_no_progress_and_log_appends_every_line(registry, tmp_path, cache):
    log = tmp_path / "run.log"
    quiet = _run(registry, tmp_path, cache, "--quiet", "--log", str(log))
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr.splitlines() == [f"results: {tmp_path / 'r.db'}"]
    assert "tiny on digits (run 1" in quiet.stdout
    first = log.read_text().splitlines()
    assert first[0].startswith("# ") and "run 1 of 'tiny'" in first[0] and "2 trainings, 4 matches" in first[0]
    assert {m[4] for m in _tasks(first)} == TASKS and first[-1].startswith("# done in ")
    verbose = _run(registry, tmp_path, cache, "--verbose", "--log", str(log), db="other.db")
    assert verbose.exit_code == 0, verbose.output
    both = log.read_text().splitlines()
    assert both[:len(first)] == first  # appended
    second = both[len(first):]
    assert {m[4] for m in _tasks(second)} == TASKS
    assert any(re.match(r"^\[0/6 \d\d:\d\d\] start training standard", line) for line in second)
    assert any(line.startswith("    eps=1: ok, robust ") for line in second)  # the stored row's details
    assert "training standard (training-time): ok (cached)" in log.read_text()
    # stderr (not a terminal) shows what the log holds, the run's first and last line without '# '
    assert [line[2:] if line.startswith("# ") else line for line in second] == verbose.stderr.splitlines()[:-1]


class Boom(FixedBudgetAttack):
    """Test attack that always raises."""

    id: ClassVar[str] = "boom"

    def run(self, model, x, y, eps, targets):
        raise RuntimeError("boom")


booming = types.ModuleType("booming")
booming.arena_register_attacks = arena.hookimpl(lambda register: register(Boom))


def test_quiet_still_prints_the_failures(tmp_path, cache):
    with zipfile.ZipFile(tmp_path / "broken.pt", "w") as z:
        z.writestr("archive/data.pkl", b"garbage")
    text = TINY.replace('id = "gda"\nparams = { copies = 2 }',
                        f'name = "broken"\nid = "model-file"\nparams = {{ path = "{tmp_path}/broken.pt" }}')
    text = text.replace('name = "pgd-l2"\nid = "pgd"\nparams = { norm = "l2", steps = 3 }', 'id = "boom"')
    reg = arena.load_plugins(extra=[("booming", booming)])
    result = _run(reg, tmp_path, cache, "--quiet", text=text)
    assert result.exit_code == 3, result.output
    failed = {m[4]: m[6] for m in _tasks(result.stderr.splitlines())}
    assert set(failed) == {"match boom vs standard", "training broken", "match fgsm vs broken", "match boom vs broken"}
    assert failed["match boom vs standard"].startswith("failed: RuntimeError: boom")
    assert failed["match fgsm vs broken"] == "failed: defense 'broken' could not be built"


def test_quiet_and_verbose_exclude_each_other(registry, tmp_path, cache):
    result = _run(registry, tmp_path, cache, "--quiet", "--verbose")
    assert result.exit_code == 2 and "--quiet and --verbose exclude each other" in result.output


# ------------------------------------------------------------------ arena runs

def test_runs_lists_every_run_of_a_database(tmp_path):
    from arena.tournament.store import MatchRow, Store

    store = Store(tmp_path / "r.db")
    for name, statuses, status in (("first", ("ok", "failed"), "finished"), ("second", ("ok",), "interrupted")):
        run_id = store.start_run(name, f"{name}-hash-0123456789", {"dataset": {"id": "digits"}}, f"{name}.toml",
                                 "", 42, 1000.0, {})
        for i, s in enumerate(statuses):
            store.save_match(run_id, MatchRow(
                defense="standard", attack="fgsm", budget=0.1 * (i + 1), attack_id="fgsm", attack_config={},
                norm="linf", knowledge="white-box", status=s, robust_accuracy=0.5 if s == "ok" else None,
                robust_mask="10" if s == "ok" else None, error=None if s == "ok" else "RuntimeError: boom"))
        store.finish_run(run_id, 1065.0, status=status)
    store.close()
    table = CliRunner().invoke(arena_cli.cli, ["runs", str(tmp_path / "r.db")])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["id", "name", "status", "started", "duration", "ok", "failed", "config", "hash",
                                "source"]
    assert lines[2].split()[:3] == ["1", "first", "finished"] and lines[3].split()[:3] == ["2", "second", "interrupted"]
    assert "01:05" in lines[2] and "first.toml" in lines[2] and "first-hash-0" in lines[2]
    listed = json.loads(CliRunner().invoke(arena_cli.cli, ["runs", str(tmp_path / "r.db"), "--format", "json"]).stdout)
    assert [(r["id"], r["matches_ok"], r["matches_failed"]) for r in listed] == [(1, 1, 1), (2, 1, 0)]
    assert listed[0]["duration_seconds"] == 65.0 and listed[0]["config_hash"] == "first-hash-0123456789"
    (tmp_path / "notes.txt").write_text("not a database")
    for path, message in (("missing.db", "no such results database"), ("notes.txt", "not an arena results database")):
        bad = CliRunner().invoke(arena_cli.cli, ["runs", str(tmp_path / path)])
        assert bad.exit_code == 2 and len(bad.stderr.splitlines()) == 1 and message in bad.stderr, bad.output


# ------------------------------------------------------------------ arena plugins

def _cli(registry, *args):
    return CliRunner().invoke(arena_cli.cli, list(args), obj=arena_cli.CliState(registry))


def test_plugins_show_lists_the_config_fields(registry):
    result = _cli(registry, "plugins", "show", "pgd")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("pgd (") and "Projected Gradient Descent" in out
    assert "kind: attack; knowledge: white-box; norms: linf, l2" in out and "adversarial-arena" in out
    fields = {line.split()[0]: line for line in out.split("config:\n")[1].splitlines()[2:] if line[:1].strip()}
    assert fields["steps"].split()[:4] == ["steps", "int", "40", "≥"]
    assert fields["norm"].split()[:5] == ["norm", "linf", "|", "l2", "linf"]
    assert "the objective: ce (cross-entropy)" in fields["loss"]
    info = json.loads(_cli(registry, "plugins", "show", "pgd", "--format", "json").stdout)
    steps = next(f for f in info["config"] if f["name"] == "steps")
    assert steps == {**steps, "type": "int", "default": 40, "required": False, "constraints": ["≥ 1"]}
    assert next(f for f in info["config"] if f["name"] == "early_stop")["description"].startswith("a sample leaves")


def test_plugins_show_errors_are_one_line(registry):
    for args, message in ((["pgdd"], "Error: unknown plugin 'pgdd' (did you mean 'pgd'?)"),
                          (["pgd", "--kind", "defense"], "Error: unknown defense 'pgd'"),
                          (["pgd", "--kind", "atack"], "Error: unknown plugin kind 'atack' (did you mean 'attack'?)")):
        result = _cli(registry, "plugins", "show", *args)
        assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.output
        assert result.stderr.startswith(message), result.stderr


def test_plugins_show_kind_tells_apart_an_id_used_twice():
    from arena_builtins.defenses.standard import Standard

    class Pgd(Standard):
        """Test defense sharing the id of the PGD attack."""

        id: ClassVar[str] = "pgd"

    twice = types.ModuleType("twice")
    twice.arena_register_defenses = arena.hookimpl(lambda register: register(Pgd))
    reg = arena.load_plugins(extra=[("twice", twice)])
    ambiguous = _cli(reg, "plugins", "show", "pgd")
    assert ambiguous.exit_code == 2
    assert ambiguous.stderr.strip() == "Error: 'pgd' names an attack and a defense; choose one with --kind"
    assert _cli(reg, "plugins", "show", "pgd", "--kind", "defenses").stdout.startswith("pgd (")
    assert "kind: defense (training-time)" in _cli(reg, "plugins", "show", "pgd", "--kind", "defense").stdout


@pytest.mark.parametrize("kind", ["attack", "attacks", "Attack"])
def test_plugins_list_kind_lists_every_norm_of_an_attack(registry, kind):
    result = _cli(registry, "plugins", "list", "--kind", kind, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in json.loads(result.stdout)}
    assert rows and {r["kind"] for r in rows.values()} == {"attack"}
    assert rows["pgd"]["norm"] == "linf, l2" and rows["apgd"]["norm"] == "linf, l1, l2"
    assert rows["deepfool"]["norm"] == "l2, linf" and rows["cw-l2"]["norm"] == "l2" and rows["jsma"]["norm"] == "l0"
    assert rows["bpda"]["norm"] == "linf, l2"  # its default inner attack's, PGD


def test_plugins_list_kind_errors_are_one_line(registry):
    result = _cli(registry, "plugins", "list", "--kind", "defences")
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert "unknown plugin kind 'defences' (did you mean 'defenses'?)" in result.stderr
    table = _cli(registry, "plugins", "list", "--kind", "defense").stdout.splitlines()
    assert table[0].split()[:2] == ["id", "kind"] and all("defense" in line for line in table[2:])
