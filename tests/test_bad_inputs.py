"""Every bad input a one-line error: a corpus of broken tournament files and command lines, each
run through the real ``arena`` command, each answered with exit code 2 and exactly one line
``Error: ...`` on stderr that names the file, the field or the value, never a traceback.

Nothing here trains a model: the executor is replaced by one that fails the test as soon as any
task is handed to it, so every error must come before the tournament starts (that is the point).
"""
from __future__ import annotations

import json
import math
import pickle
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import arena.tournament.executors
from arena.cli import CliState, cli
from arena.tournament.store import MatchRow, Store

BASE = {
    "name": "bad",
    "dataset": "digits",
    "architecture": "digits-cnn",
    "samples": 20,
    "training": {"epochs": 1},
    "defenses": [{"id": "standard"}],
    "attacks": [{"id": "fgsm", "budgets": [0.1]}],
}
FILE = "t.toml"


def toml_value(v: object) -> str:
    """``v`` as a TOML value (inline tables and arrays): enough to write the corpus' files."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def toml(data: dict) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in data.items())


DROP = object()


def edit(**changes: object) -> str:
    """The base tournament with top-level keys changed (``DROP`` removes one)."""
    data = {**BASE, **changes}
    return toml({k: v for k, v in data.items() if v is not DROP})


def defenses(*entries: dict) -> str:
    return edit(defenses=list(entries))


def defense(**entry: object) -> str:
    return defenses({"id": "standard", **entry})


def attacks(*entries: dict) -> str:
    return edit(attacks=list(entries))


def attack(**entry: object) -> str:
    return attacks({"id": "fgsm", "budgets": [0.1], **entry})


def model_file(path: str, **params: object) -> str:
    return defenses({"id": "standard"}, {"id": "model-file", "name": "file", "params": {"path": path, **params}})


def case(name: str, text: str | bytes, *fragments: str, marks: tuple = ()) -> object:
    return pytest.param(text, fragments, id=name, marks=marks)


AT = {"id": "adversarial-training", "name": "at"}
FS = {"id": "feature-squeezing", "name": "fs", "on": "standard"}

FILES = [
    # the file itself
    case("toml-unclosed-string", 'name = "bad\n', "invalid TOML"),
    case("toml-duplicate-key", edit() + "samples = 30\n", "invalid TOML"),
    case("toml-not-toml", "this is not toml at all\n", "invalid TOML"),
    case("toml-array-of-tables-clash", edit() + "[defenses]\nid = 'x'\n", "invalid TOML"),
    case("non-utf8", b'name = "caf\xe9"\n', "not UTF-8"),
    case("binary", bytes(range(256)) * 4, "not UTF-8"),
    case("binary-ascii-controls", b"\x00\x01\x02\x03\x04", "invalid TOML"),
    case("empty", b"", "empty"),
    case("comments-only", "# nothing here\n", "empty"),
    # top level
    case("unknown-top-key-close", edit(sampels=10), "sampels: unknown key (did you mean 'samples'?)"),
    case("unknown-top-key-far", edit(colour="red"), "colour: unknown key; valid keys:"),
    case("missing-dataset", edit(dataset=DROP), "dataset: Field required"),
    case("missing-defenses", edit(defenses=DROP), "defenses: Field required"),
    case("missing-attacks", edit(attacks=DROP), "attacks: Field required"),
    case("name-not-a-string", edit(name=3), "name:"),
    case("dataset-unknown", edit(dataset="digitz"), "dataset.id: unknown dataset 'digitz' (did you mean 'digits'?)"),
    case("dataset-not-a-table", edit(dataset=3), "dataset"),
    case("dataset-unknown-key", edit(dataset={"id": "digits", "param": {}}),
         "dataset.param: unknown key (did you mean 'params'?)"),
    case("dataset-unknown-param", edit(dataset={"id": "digits", "params": {"test_fractoin": 0.2}}),
         "dataset.params", "test_fractoin: unknown key (did you mean 'test_fraction'?)"),
    case("dataset-bad-param", edit(dataset={"id": "digits", "params": {"test_fraction": 2}}),
         "dataset.params", "test_fraction"),
    case("architecture-unknown", edit(architecture="digits-cn"),
         "architecture.id: unknown architecture 'digits-cn' (did you mean 'digits-cnn'?)"),
    case("architecture-unknown-param", edit(architecture={"id": "mlp", "params": {"hiden": 3}}),
         "architecture.params", "hiden: unknown key"),
    case("seed-string", edit(seed="42"), 'seed: expected a whole number, got "42"'),
    case("seed-float", edit(seed=4.2), "seed: expected a whole number, got 4.2"),
    case("seed-bool", edit(seed=True), "seed: expected a whole number, got true"),
    case("seed-negative", edit(seed=-1), "seed: Input should be greater than or equal to 0"),
    case("seed-too-large", edit(seed=2**40), "seed: Input should be less than or equal to"),
    case("samples-string", edit(samples="100"), 'samples: expected a whole number, got "100"'),
    case("samples-float", edit(samples=100.0), "samples: expected a whole number, got 100.0"),
    case("samples-bool", edit(samples=True), "samples: expected a whole number, got true"),
    case("samples-zero", edit(samples=0), "samples: Input should be greater than or equal to 1"),
    case("samples-negative", edit(samples=-5), "samples: Input should be greater than or equal to 1"),
    case("samples-more-than-the-test-set", edit(samples=5000),
         "samples: 5000 is more than the 450 test samples of dataset 'digits'"),
    case("batch-size-string", edit(batch_size="64"), 'batch_size: expected a whole number or "auto", got "64"'),
    case("batch-size-float", edit(batch_size=6.4), "batch_size: expected a whole number, got 6.4"),
    case("batch-size-zero", edit(batch_size=0), "batch_size: Input should be greater than or equal to 1"),
    case("match-timeout-string", edit(match_timeout="60"), 'match_timeout: expected a number, got "60"'),
    case("match-timeout-zero", edit(match_timeout=0), "match_timeout: Input should be greater than 0"),
    case("match-timeout-negative", edit(match_timeout=-1.5), "match_timeout: Input should be greater than 0"),
    case("match-timeout-nan", edit(match_timeout=math.nan), "match_timeout: expected a finite number, got nan"),
    case("match-timeout-inf", edit(match_timeout=math.inf), "match_timeout: expected a finite number, got inf"),
    case("match-timeout-bool", edit(match_timeout=True), "match_timeout: expected a number, got true"),
    case("save-examples-string", edit(save_examples="yes"), 'save_examples: expected true or false, got "yes"'),
    case("save-examples-int", edit(save_examples=1), "save_examples: expected true or false, got 1"),
    case("resources-unknown-key", edit(resources={"num_cpu": 1}),
         "resources.num_cpu: unknown key (did you mean 'num_cpus'?)"),
    case("resources-negative-gpus", edit(resources={"num_gpus": -1}), "resources.num_gpus"),
    case("resources-string-cpus", edit(resources={"num_cpus": "2"}), 'resources.num_cpus: expected a number, got "2"'),
    case("training-unknown-key", edit(training={"epocs": 1}), "training: epocs: unknown key (did you mean 'epochs'?)"),
    case("training-bad-value", edit(training={"epochs": 0}), "training: epochs"),
    case("training-not-a-table", edit(training=3), "training:"),
    # defenses
    case("defenses-empty", edit(defenses=[]), "defenses: List should have at least 1 item"),
    case("defenses-not-a-list", edit(defenses="standard"), "defenses:"),
    case("defense-unknown-id", defense(id="standrad"), "defenses[0].id: unknown defense 'standrad' "
         "(did you mean 'standard'?)"),
    case("defense-missing-id", defenses({"name": "x"}), "defenses[0].id: Field required"),
    case("defense-unknown-key", defense(parms={}), "defenses[0].parms: unknown key (did you mean 'params'?)"),
    case("defense-unknown-param", defense(params={"epocs": 1}),
         "defenses[0].params: defense 'standard': epocs: unknown key (did you mean 'epochs'?)"),
    case("defense-bad-param", defenses({"id": "gda", "params": {"copies": -2}}),
         "defenses[0].params: defense 'gda': copies: Input should be greater than or equal to 1"),
    case("defense-params-not-a-table", defense(params=3), "defenses[0].params:"),
    case("defense-duplicate-name", defenses({"id": "standard"}, {"id": "standard"}),
         "defenses: [0] and [1] have the same name 'standard'"),
    case("defense-empty-name", defense(name=""), "defenses[0].name: String should have at least 1 character"),
    case("defense-on-unknown", defenses({"id": "standard"}, {**FS, "on": "standrad"}),
         "defenses[1].on: no defense named 'standrad' (did you mean 'standard'?)"),
    case("defense-on-itself", defenses({"id": "standard"}, {**FS, "on": "fs"}),
         "defenses[1].on: no defense named 'fs'"),
    case("defense-on-a-training-defense", defenses({"id": "standard"}, {"id": "gda", "on": "standard"}),
         "defenses[1].on: training-time defense 'gda' brings its own model"),
    case("defense-finetune-an-inference-defense",
         defenses({"id": "standard"}, {**FS, "finetune_from": "standard"}),
         "defenses[1].finetune_from: inference-time defense 'feature-squeezing' trains nothing to fine-tune"),
    case("defense-architecture-on-a-wrapper",
         defenses({"id": "standard"}, {**FS, "architecture": "mlp"}),
         "defenses[1].architecture: inference-time defense 'feature-squeezing' runs on the model of 'standard'"),
    case("defense-inference-without-on", defenses({"id": "standard"}, {"id": "feature-squeezing"}),
         "defenses[1].on: ", "needs the name of the trained model it protects"),
    case("defense-finetune-from-unknown", defenses({"id": "standard"}, {"id": "gda", "finetune_from": "std"}),
         "defenses[1].finetune_from: no defense named 'std'"),
    case("defense-cycle", defenses({"id": "standard", "name": "a", "finetune_from": "b"},
                                   {"id": "standard", "name": "b", "finetune_from": "a"}),
         "defenses: 'on'/'finetune_from' form a cycle among a, b"),
    case("defense-architecture-unknown", defense(architecture="mlpp"),
         "defenses[0].architecture.id: unknown architecture 'mlpp' (did you mean 'mlp'?)"),
    case("nested-attack-unknown", defenses({"id": "standard"}, {**AT, "params": {"attack": "pgx"}}),
         "defenses[1].params", "unknown attack 'pgx' (did you mean 'pgd'?)"),
    case("nested-attack-param-typo", defenses({"id": "standard"},
                                              {**AT, "params": {"attack": {"id": "pgd", "params": {"stpes": 2}}}}),
         "defenses[1].params", "stpes: unknown key (did you mean 'steps'?)"),
    case("nested-budget-nan", defenses({"id": "standard"}, {**AT, "params": {"eps": math.nan}}),
         "defenses[1].params: defense 'adversarial-training': eps"),
    case("nested-attack-in-dln", defenses({"id": "standard"}, {"id": "dln", "on": "standard",
                                                               "params": {"attack": "fgsn"}}),
         "defenses[1].params", "unknown attack 'fgsn'"),
    case("nested-attack-in-jacobian-reg",
         defenses({"id": "jacobian-reg", "params": {"adversarial": {"attack": "cw-l3"}}}),
         "defenses[0].params", "unknown attack 'cw-l3'"),
    # model files, checked when the file loads rather than mid-run
    case("model-file-missing", model_file("{tmp}/none.pt"), "defenses[1].params", "model file not found", "none.pt"),
    case("model-file-folder", model_file("{tmp}/folder.pt"), "folder.pt is not a file"),
    case("model-file-pickle", model_file("{tmp}/pickled.pt"), "pickled.pt is not a torch.save file"),
    case("model-file-garbage", model_file("{tmp}/garbage.pt"), "garbage.pt is not a torch.save file"),
    case("model-file-empty", model_file("{tmp}/empty.pt"), "empty.pt is empty"),
    case("model-file-bad-safetensors", model_file("{tmp}/garbage.safetensors"),
         "garbage.safetensors is not a safetensors file"),
    case("model-file-keras-not-zip", model_file("{tmp}/garbage.keras"), "garbage.keras is not a Keras zip archive"),
    case("model-file-unknown-suffix", model_file("{tmp}/model.onnx"), "no backend reads '.onnx' files"),
    case("model-file-backend-typo", model_file("{tmp}/weights.pt", backend="torhc"),
         "unknown backend 'torhc' (did you mean 'torch'?)"),
    case("model-file-path-not-a-string", defenses({"id": "model-file", "params": {"path": 3}}),
         "defenses[0].params", "path"),
    # attacks
    case("attacks-empty", edit(attacks=[]), "attacks: List should have at least 1 item"),
    case("attack-unknown-id", attack(id="fgsn"), "attacks[0].id: unknown attack 'fgsn' (did you mean 'fgsm'?)"),
    case("attack-unknown-key", attacks({"id": "fgsm", "budget": [0.1]}),
         "attacks[0].budget: unknown key (did you mean 'budgets'?)"),
    case("attack-unknown-param", attack(id="pgd", params={"stpes": 5}),
         "attacks[0].params: attack 'pgd': stpes: unknown key (did you mean 'steps'?)"),
    case("attack-bad-param", attack(params={"norm": "l3"}), "attacks[0].params: attack 'fgsm': norm"),
    case("budgets-not-a-list", attack(budgets="0.1"), "attacks[0].budgets:"),
    case("budget-string", attack(budgets=["0.1"]), 'attacks[0].budgets[0]: expected a number, got "0.1"'),
    case("budget-bool", attack(budgets=[True]), "attacks[0].budgets[0]: expected a number, got true"),
    case("budget-nan", attack(budgets=[math.nan]), "attacks[0].budgets[0]: a budget must be a finite number above 0, "
         "got nan"),
    case("budget-inf", attack(budgets=[math.inf]), "a budget must be a finite number above 0, got inf"),
    case("budget-zero", attack(budgets=[0.0]), "a budget must be a finite number above 0, got 0.0"),
    case("budget-negative", attack(budgets=[-0.1]), "a budget must be a finite number above 0, got -0.1"),
    case("budget-duplicate", attack(budgets=[0.1, 0.3, 0.1]), "attacks[0].budgets: 0.1 is given twice"),
    case("budget-linf-above-one", attack(budgets=[0.1, 1.5]),
         "attacks[0].budgets: 1.5 is more than 1, the whole [0, 1] pixel range, for L∞ attack 'fgsm'"),
    case("budgets-missing", attacks({"id": "pgd"}),
         "attacks[0].budgets: fixed-budget attack 'pgd' needs at least one budget"),
    case("attack-duplicate-name", attacks({"id": "fgsm", "budgets": [0.1]}, {"id": "fgsm", "budgets": [0.2]}),
         "attacks: [0] and [1] have the same name 'fgsm'"),
    case("attack-empty-name", attack(name=""), "attacks[0].name: String should have at least 1 character"),
    case("surrogate-unknown", attack(surrogate="standrad"),
         "attacks[0].surrogate: no defense named 'standrad' (did you mean 'standard'?)"),
    case("surrogate-black-box", attack(id="hopskipjump", surrogate="standard"),
         "attacks[0]: only white-box attacks can be run as transfer or gray-box attacks"),
    case("surrogate-and-view", attack(surrogate="standard", view="gray-box"),
         "attacks[0]: choose either surrogate (transfer) or view (gray-box)"),
    case("view-unknown", attack(view="grey-box"), "attacks[0].view: Input should be 'gray-box'"),
    case("against-unknown", attack(against=["standrad"]),
         "attacks[0].against: no defense named 'standrad' (did you mean 'standard'?)"),
    case("against-empty", attack(against=[]), "attacks[0].against: name at least one defense"),
    case("against-not-a-list", attack(against="standard"), "attacks[0].against:"),
    case("attack-timeout-zero", attack(timeout=0), "attacks[0].timeout: Input should be greater than 0"),
    case("attack-timeout-string", attack(timeout="10"), 'attacks[0].timeout: expected a number, got "10"'),
    case("wrapper-black-box-inner", attack(id="eot", params={"inner": "hopskipjump"}),
         "attacks[0].params", "needs a white-box (gradient) attack"),
    case("substitute-architecture-typo", attack(id="substitute", params={"architecture": "digits-cn"}),
         "attacks[0].params", "unknown architecture 'digits-cn'"),
]


class RefusingExecutor:
    """Stands in for every executor: a bad input must be refused before any task (a training)."""

    name = "refusing"

    def share(self, obj: object) -> object:
        return obj

    def map(self, fn, jobs):
        raise AssertionError(f"the tournament started ({getattr(fn, '__name__', fn)}): the error came too late")

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def no_tournament(monkeypatch):
    monkeypatch.setattr(arena.tournament.executors, "make_executor", lambda *a, **k: RefusingExecutor())


@pytest.fixture()
def model_files(tmp_path: Path) -> Path:
    """Broken model files: a folder, a pickle, garbage, an empty file, bad safetensors and Keras
    files, an unknown suffix; ``weights.pt`` is a good zip (for the backend typo)."""
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "pickled.pt").write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    (tmp_path / "garbage.pt").write_bytes(b"not a model at all\n" * 10)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    (tmp_path / "garbage.keras").write_bytes(b"<html>not found</html>")
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    with zipfile.ZipFile(tmp_path / "weights.pt", "w") as z:
        z.writestr("archive/data.pkl", b"")
    return tmp_path


def invoke(registry, args: list[str]):
    return CliRunner().invoke(cli, args, obj=CliState(registry), catch_exceptions=True)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


@pytest.mark.parametrize("text, fragments", FILES)
def test_a_bad_tournament_file_is_one_line(registry, model_files, tmp_path, text, fragments):
    path = tmp_path / FILE
    if isinstance(text, str):
        path.write_text(text.replace("{tmp}", str(model_files)), encoding="utf-8")
    else:
        path.write_bytes(text)
    result = invoke(registry, ["run", str(path), "--db", str(tmp_path / "r.db"), "--quiet",
                               "--cache-dir", str(tmp_path / "cache")])
    assert_one_line_error(result, f"Error: {path}: ", *fragments)


def test_the_base_file_is_valid(registry, tmp_path):
    """Each case above breaks one thing in a file that is otherwise fine."""
    from arena.tournament.plan import load_tournament

    path = tmp_path / FILE
    path.write_text(edit())
    plan = load_tournament(path, registry)
    assert [d.label for d in plan.defenses] == ["standard"] and plan.attacks[0].budgets == (0.1,)


def test_samples_are_checked_against_the_test_set_once_it_is_loaded(registry, tmp_path):
    from arena.errors import ConfigError
    from arena.tournament.plan import check_samples, load_tournament

    data = registry.make_dataset("digits").load(42)
    for samples in (20, len(data.test)):
        path = tmp_path / FILE
        path.write_text(edit(samples=samples))
        check_samples(load_tournament(path, registry), data)
    path.write_text(edit(samples=5000))
    with pytest.raises(ConfigError) as info:
        check_samples(load_tournament(path, registry), data)
    assert str(info.value) == f"{path}: samples: 5000 is more than the 450 test samples of dataset 'digits'"


def test_a_directory_as_file_is_one_line(registry, tmp_path):
    from arena.errors import ConfigError
    from arena.tournament.plan import load_tournament

    (tmp_path / "dir.toml").mkdir()
    assert_one_line_error(invoke(registry, ["run", str(tmp_path / "dir.toml")]), "dir.toml", "is a directory")
    with pytest.raises(ConfigError, match="dir.toml: is a directory, not a tournament file"):
        load_tournament(tmp_path / "dir.toml", registry)  # the library says so too


def test_a_missing_file_is_one_line(registry, tmp_path):
    assert_one_line_error(invoke(registry, ["run", str(tmp_path / "nope.toml")]), "nope.toml: no such tournament file")


# ------------------------------------------------------------------ flags and databases
def make_store(path: Path) -> Path:
    """A results database with one finished run: defense 'standard', fgsm at 0.05 and 0.1."""
    store = Store(path)
    run = store.start_run("t", "h", {"dataset": {"id": "digits"}}, None, None, 42, 0.0, {})
    store.save_model(run, defense="standard", defense_id="standard", defense_kind="training-time", config={},
                     clean_accuracy=1.0, clean_mask="1111", false_positive_rate=None, cache_key=None,
                     train_seconds=0.0, checks={})
    for budget in (0.05, 0.1):
        store.save_match(run, MatchRow(defense="standard", attack="fgsm", budget=budget, attack_id="fgsm",
                                       attack_config={}, norm="linf", knowledge="white-box", status="ok",
                                       robust_accuracy=0.5, success_rate=0.5, robust_mask="1100",
                                       wall_seconds=1.0))
    store.finish_run(run, 1.0)
    store.close()
    return path


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return make_store(tmp_path / "r.db")


@pytest.fixture()
def not_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 50)
    return path


@pytest.fixture()
def tournament(tmp_path: Path) -> Path:
    path = tmp_path / FILE
    path.write_text(edit())
    return path


def _unwritable() -> str:
    """A folder no one can create, root included."""
    return "/sys/arena_site" if Path("/sys").is_dir() else "/proc/arena_site"



FLAGS = [
    pytest.param(["run", "{tournament}", "--bogus"], ["No such option '--bogus'", "run --help"],
                 id="run-unknown-option"),
    pytest.param(["run", "{tournament}", "--format", "xml"], ["'--format'", "'xml' is not one of"],
                 id="run-bad-format"),
    pytest.param(["run", "{tournament}", "--executor", "nope"], ["'--executor'", "'nope' is not one of"],
                 id="run-bad-executor"),
    pytest.param(["run"], ["Missing argument 'FILE'"], id="run-no-file"),
    pytest.param(["run", "{tournament}", "--db", "{tmp}"], ["'--db'", "is a directory"], id="run-db-is-a-folder"),
    pytest.param(["run", "{tournament}", "--db", "{not_sqlite}"], ["notes.db", "not an arena results database"],
                 id="run-db-not-sqlite"),
    pytest.param(["run", "{tournament}", "--resume", "yes"], ["unexpected extra argument", "yes"],
                 id="run-extra-argument"),
    pytest.param(["run", "{tournament}", "--resume", "--db", "{tmp}/none.db"], ["none.db", "no results database to resume"],
                 id="run-resume-missing-db"),
    pytest.param(["run", "{tournament}", "--resume", "--db", "{tmp}/empty.db"], ["empty.db", "no results database to resume"],
                 id="run-resume-empty-db"),
    pytest.param(["runn", "{tournament}"], ["No such command 'runn'"], id="unknown-command"),
    pytest.param(["--bogus"], ["No such option '--bogus'"], id="unknown-top-option"),
    pytest.param(["plugins", "list", "--format", "xml"], ["'xml' is not one of 'table', 'json'"],
                 id="plugins-bad-format"),
    pytest.param(["leaderboard", "{tmp}/missing.db"], ["missing.db", "does not exist"], id="leaderboard-missing-db"),
    pytest.param(["leaderboard", "{not_sqlite}"], ["notes.db", "not an arena results database"],
                 id="leaderboard-not-sqlite"),
    pytest.param(["leaderboard", "{db}", "--format", "xml"], ["'xml' is not one of"], id="leaderboard-bad-format"),
    pytest.param(["leaderboard", "{db}", "--run", "abc"], ["'--run'", "'abc' is not a valid integer"],
                 id="leaderboard-run-not-a-number"),
    pytest.param(["leaderboard", "{db}", "--run", "999"], ["r.db", "no run 999", "runs: 1"],
                 id="leaderboard-run-999"),
    pytest.param(["leaderboard", "{db}", "--budget", "0.77"], ["r.db", "0.77", "budgets: 0.05, 0.1"],
                 id="leaderboard-budget-absent"),
    pytest.param(["leaderboard", "{db}", "--budget", "abc"], ["'--budget'", "'abc' is not a valid float"],
                 id="leaderboard-budget-not-a-number"),
    pytest.param(["leaderboard", "{db}", "--threat-model", "grey-box"], ["'grey-box' is not one of"],
                 id="leaderboard-bad-threat-model"),
    pytest.param(["leaderboard", "{db}", "--dataset", "mnist"], ["r.db", "run 1 is on dataset 'digits', not 'mnist'"],
                 id="leaderboard-other-dataset"),
    pytest.param(["leaderboard", "{tmp}/empty.db"], ["empty.db", "no tournament run found"], id="leaderboard-no-runs"),
    pytest.param(["publish", "{tmp}/missing.db", "{tmp}/site"], ["missing.db", "does not exist"],
                 id="publish-missing-db"),
    pytest.param(["publish", "{db}"], ["Missing argument 'DIRECTORY'"], id="publish-no-directory"),
    pytest.param(["publish", "{db}", "{db}"], ["'DIRECTORY'", "is a file"], id="publish-into-a-file"),
    pytest.param(["publish", "{db}", "{unwritable}"], ["arena_site"], id="publish-unwritable"),
    pytest.param(["publish", "{db}", "{tmp}/a-file/site"], ["a-file"], id="publish-under-a-file"),
    pytest.param(["publish", "{db}", "{tmp}/someone-elses"], ["someone-elses", "holds no arena site"],
                 id="publish-foreign-folder"),
    pytest.param(["new-plugin", "Not A Name!", "--dir", "{tmp}"], ["Not A Name!"], id="new-plugin-bad-name"),
]


@pytest.mark.parametrize("args, fragments", FLAGS)
def test_a_bad_command_line_is_one_line(registry, tmp_path, db, not_sqlite, tournament, args, fragments):
    Store(tmp_path / "empty.db").close()
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "someone-elses").mkdir()
    (tmp_path / "someone-elses" / "thesis.tex").write_text("x")
    places = {"tmp": str(tmp_path), "db": str(db), "not_sqlite": str(not_sqlite), "tournament": str(tournament),
              "unwritable": _unwritable()}
    result = invoke(registry, [a.format(**places) for a in args])
    assert_one_line_error(result, *fragments)


def test_help_is_still_help(registry):
    for args in (["--help"], ["run", "--help"], ["leaderboard", "--help"]):
        result = invoke(registry, args)
        assert result.exit_code == 0 and result.output.startswith("Usage: ") and "--help" in result.output


def test_no_arguments_shows_the_help(registry):
    result = invoke(registry, [])
    assert result.exit_code == 2 and "Usage: " in result.output and "run" in result.output


def test_the_corpus_is_large():
    assert len(FILES) + len(FLAGS) + 2 >= 60
