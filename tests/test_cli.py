"""Tests of the ``jopt train`` console program (jopt/cli/).

Runs call ``main([...])`` in-process (one compile cache, fast) with ``--out`` under
``tmp_path``; one test runs ``python -m jopt`` in a subprocess.
"""

import subprocess
import sys

# The examples extra is part of the test extra: a missing package is a failure, not a skip.
import flax  # noqa: E402,F401
import matplotlib  # noqa: E402,F401
import numpy as np
import pytest
import sklearn  # noqa: E402,F401
import tqdm  # noqa: E402,F401
from helpers import strict_json  # noqa: E402

import jopt  # noqa: E402
from jopt.cli import main  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"




def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error message on stderr"
    return err[-1]


def test_help_runs_as_module():
    r = subprocess.run([sys.executable, "-m", "jopt", "train", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for opt in ("--dataset", "--data", "--optimizer", "--learning-rate", "--schedule",
                "--warmup-steps", "--weight-decay", "--clip-norm", "--batch-size", "--epochs",
                "--patience", "--min-delta", "--seed", "--out", "--compare", "--population",
                "--reduce-on-plateau", "--plateau-factor", "--plateau-patience"):
        assert opt in r.stdout


def test_end_to_end_digits_few_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    stdout = captured.out
    # One validation line per epoch, then the summary and the folder.
    epoch_lines = [ln for ln in stdout.splitlines() if ln.startswith("epoch ")]
    assert len(epoch_lines) == 3
    for word in ("train_loss", "val_loss", "val_acc", "lr"):
        assert word in epoch_lines[0]
    for word in ("epochs run:", "stop reason:", "max epochs reached", "best epoch:",
                 "test accuracy:", "wall time:"):
        assert word in stdout
    assert str(out) in stdout
    # Not a terminal: no progress bar, so a redirected log stays one line per epoch.
    assert "loss=" not in captured.err

    metrics = strict_json(out / "metrics.json")
    assert set(metrics) >= {"config", "steps", "epochs", "summary"}
    cfg = metrics["config"]
    assert cfg["optimizer"] == "adamw" and cfg["schedule"] == "warmup_cosine"
    n_steps = 3 * cfg["steps_per_epoch"]
    steps = metrics["steps"]
    assert len(steps["loss"]) == len(steps["learning_rate"]) == n_steps
    assert len(metrics["epochs"]) == 3
    assert set(metrics["epochs"][0]) >= {"epoch", "train_loss", "val_loss", "val_accuracy",
                                         "learning_rate"}
    summary = metrics["summary"]
    assert set(summary) >= {"epochs_run", "stop_reason", "best_epoch", "test_accuracy",
                            "wall_time_s"}
    assert summary["epochs_run"] == 3 and summary["stop_reason"] == "max epochs reached"
    # The logged learning rate is the one each update used: the schedule at steps 0, 1, ...
    sched = jopt.warmup_cosine_decay(0.0, cfg["learning_rate"], cfg["warmup_steps"],
                                     cfg["total_steps"])
    expected = [float(sched(np.int32(k))) for k in range(n_steps)]
    np.testing.assert_allclose(steps["learning_rate"], expected, rtol=1e-6, atol=1e-12)
    assert steps["loss"][-1] < steps["loss"][0]

    png = (out / "curves.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000


def test_default_configuration_reaches_95_percent_and_matches_optax(tmp_path, capsys):
    # The whole default run (jopt train with no options), replayed with optax in the same
    # process. Clipping multiplies by one scalar factor where optax divides each element (a
    # last-bit difference), and training amplifies such differences slowly: the first 100
    # steps agree to 1e-5 relative (measured 7e-7), the whole run to 1e-5 of the initial loss
    # (measured 9e-7 over 320 steps; a real difference in the recipe is orders larger).
    out = tmp_path / "default"
    assert main(["train", "--compare", "optax", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    metrics = strict_json(out / "metrics.json")
    summary = metrics["summary"]
    assert summary["test_accuracy"] >= 0.95, stdout
    assert summary["stop_reason"] in ("patience exhausted", "max epochs reached")
    assert summary["best_epoch"] is not None and summary["best_epoch"] <= summary["epochs_run"]
    cmp = metrics["compare"]
    assert cmp["steps"] == len(metrics["steps"]["loss"]) == len(cmp["rel_loss_diff"]) > 100
    assert max(cmp["rel_loss_diff"][:100]) <= 1e-5, cmp["rel_loss_diff"][:100]
    assert cmp["max_scaled_loss_diff"] <= 1e-5, cmp["max_scaled_loss_diff"]


def test_default_output_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "wine", "--epochs", "1"]) == 0
    runs = list((tmp_path / "jopt-runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("train-")
    assert str(runs[0]) in capsys.readouterr().out
    assert (runs[0] / "metrics.json").exists() and (runs[0] / "curves.png").exists()


def test_compare_optax_default_config_agrees(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["train", "--epochs", "4", "--compare", "optax", "--out", str(out)]) == 0
    cmp = strict_json(out / "metrics.json")["compare"]
    assert cmp["steps"] == len(cmp["rel_loss_diff"]) > 0
    assert cmp["max_rel_loss_diff"] <= 1e-5, cmp["max_rel_loss_diff"]


def test_compare_optax_sgd_agrees(tmp_path, capsys):
    # SGD with momentum has no (1 - beta) coefficients, so it isolates the replay itself
    # (same initial parameters, batch order, step count, clipping and schedule).
    out = tmp_path / "cmp_sgd"
    assert main(["train", "--optimizer", "sgd", "--learning-rate", "0.05", "--epochs", "4",
                 "--compare", "optax", "--out", str(out)]) == 0
    assert "optax compare" in capsys.readouterr().out
    metrics = strict_json(out / "metrics.json")
    cmp = metrics["compare"]
    assert cmp["library"] == "optax"
    assert cmp["steps"] == len(metrics["steps"]["loss"]) == 4 * metrics["config"]["steps_per_epoch"]
    assert cmp["max_rel_loss_diff"] <= 1e-5, cmp["max_rel_loss_diff"]


@pytest.mark.parametrize("schedule", ["constant", "linear", "exponential"])
def test_schedules_match_optax(schedule, tmp_path, capsys):
    # Each named schedule is built from jopt.schedules and from optax's equivalents; the
    # replay agrees step by step only if the two learning-rate curves do.
    out = tmp_path / schedule
    assert main(["train", "--optimizer", "sgd", "--learning-rate", "0.05", "--schedule",
                 schedule, "--warmup-steps", "10", "--epochs", "2", "--compare", "optax",
                 "--out", str(out)]) == 0
    metrics = strict_json(out / "metrics.json")
    lr = metrics["steps"]["learning_rate"]
    assert lr[0] == 0.0 and max(lr) == pytest.approx(0.05)
    assert metrics["compare"]["max_rel_loss_diff"] <= 1e-5


def test_diverging_run_stops_on_non_finite_metric(tmp_path, capsys):
    out = tmp_path / "diverge"
    assert main(["train", "--learning-rate", "1e4", "--epochs", "5", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "stop reason:    non-finite metric" in stdout
    assert "test accuracy:" in stdout and "wall time:" in stdout
    metrics = strict_json(out / "metrics.json")  # NaN losses are stored as null
    assert metrics["summary"]["stop_reason"] == "non-finite metric"
    assert (out / "curves.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("option, value, names", [
    ("--optimizer", "lion", ("adamw", "adam", "sgd")),
    ("--schedule", "cyclic", ("warmup_cosine", "constant", "linear", "exponential")),
])
def test_unknown_choice_lists_valid_names(option, value, names, capsys):
    assert main(["train", option, value]) == 2
    line = _error_line(capsys)
    assert line.startswith("jopt train: error:") and "invalid choice" in line
    for name in names:
        assert name in line


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("missing_file", "data file not found"),
    ("missing_y", "lacks array(s) y"),
    ("length_mismatch", "different lengths: 30 samples, 29 labels"),
    ("strings", "X in {path} must be numeric"),
    ("object_array", "not numeric (object arrays are never unpickled)"),
    ("X_3d", "must be 2-D (samples x features); got shape (30, 2, 2)"),
    ("y_2d", "y in {path} must be 1-D"),
    ("float_labels", "must hold integer class labels"),
    ("not_npz", "is not an .npz archive"),
    ("no_samples", "has no samples"),
    ("overflowing_values", "values too large to standardise"),
])
def test_bad_data_file(case, message, tmp_path, capsys):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), np.arange(30) % 3
    p = tmp_path / "data.npz"
    if case == "missing_file":
        path = str(tmp_path / "nope.npz")
    elif case == "missing_y":
        path = _npz(p, X=X)
    elif case == "length_mismatch":
        path = _npz(p, X=X, y=y[:-1])
    elif case == "strings":
        path = _npz(p, X=X.astype(str), y=y)
    elif case == "object_array":
        path = _npz(p, X=np.array([[1.0, "a"]] * 30, dtype=object), y=y)
    elif case == "X_3d":
        path = _npz(p, X=X.reshape(30, 2, 2), y=y)
    elif case == "y_2d":
        path = _npz(p, X=X, y=y.reshape(30, 1) * np.ones((1, 2), int))
    elif case == "float_labels":
        path = _npz(p, X=X, y=y + 0.5)
    elif case == "no_samples":
        path = _npz(p, X=np.zeros((0, 4)), y=np.zeros((0,), int))
    elif case == "overflowing_values":
        path = _npz(p, X=X * 1e300, y=y)
    else:
        p.write_text("X,y\n1,2\n")
        path = str(p)
    out = tmp_path / "out"
    assert main(["train", "--data", path, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err  # one line, no traceback
    assert lines[0].startswith("jopt train: error: ")
    assert message.format(path=path) in lines[0]
    assert not out.exists()  # nothing is written for bad input


def test_good_npz_file_trains(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = np.repeat(np.array([3, 7]), 40)  # labels need not be 0..k-1
    X = rng.normal(size=(80, 5)) + y[:, None].astype(np.float64)
    path = _npz(tmp_path / "ok.npz", X=X.astype(np.float32), y=y)
    assert main(["train", "--data", path, "--epochs", "2", "--out", str(tmp_path / "o")]) == 0
    data = strict_json(tmp_path / "o" / "metrics.json")["data"]
    assert data["n_classes"] == 2 and data["n_features"] == 5


def test_missing_optional_dependency(monkeypatch, tmp_path, capsys):
    # None in sys.modules makes `import tqdm` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert main(["train", "--out", str(tmp_path / "o")]) == 2
    line = _error_line(capsys)
    assert line.startswith("jopt train: error:")
    assert 'pip install "jopt[examples]"' in line


def test_bad_numbers_are_usage_errors(tmp_path, capsys):
    assert main(["train", "--batch-size", "0"]) == 2
    assert "--batch-size" in _error_line(capsys)
    assert main(["train", "--warmup-steps", "100000", "--epochs", "1",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--warmup-steps" in _error_line(capsys)


def test_progress_bar_on_a_terminal(tmp_path, capsys, monkeypatch):
    # On a terminal the tqdm bar shows the running loss and accuracy.
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(["train", "--dataset", "wine", "--epochs", "2", "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "train:" in err and "loss=" in err and "acc=" in err


def test_bad_seed_and_blocked_output_fail_before_training(tmp_path, capsys):
    for seed in ("-1", str(2**64)):
        assert main(["train", "--seed", seed]) == 2
        assert "--seed" in _error_line(capsys)
    blocked = tmp_path / "blocked"
    (blocked / "curves.png").mkdir(parents=True)
    assert main(["train", "--out", str(blocked)]) == 2
    assert "cannot write" in _error_line(capsys)
    assert not (blocked / "metrics.json").exists()


# ------------------------------------------------------------------------ --population

# Three peak learning rates that early-stop at three different epochs (5, 6 and 7 of 8) with
# patience 1 and a coarse min_delta, so one run shows per-member stopping, freezing and the
# population ending before the last epoch. The margins of those decisions are >= 3e-3, far
# above the float32 rounding by which vmapped matmuls differ from unbatched ones.
POP_LRS = ("3e-4", "1e-3", "3e-3")
POP_ARGS = ("--epochs", "8", "--patience", "1", "--min-delta", "0.03")


def test_population_end_to_end_and_members_equal_solo_runs(tmp_path, capsys):
    out = tmp_path / "population"
    assert main(["train", "--population", "learning_rate=" + ",".join(POP_LRS), *POP_ARGS,
                 "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    metrics = strict_json(out / "metrics.json")
    members = metrics["members"]
    assert len(members) == 3

    # The table: a header and one row per member with its value, epochs, stop reason, best
    # epoch, best validation loss and test accuracy (with that member's best parameters).
    lines = stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if "best val loss" in ln)
    for col in ("member", "learning_rate", "stop reason", "best epoch", "test acc"):
        assert col in lines[head]
    for row, m, lr in zip(lines[head + 1:head + 4], members, POP_LRS):
        s = m["summary"]
        assert row.split()[:3] == [str(m["member"]), f"{float(lr):g}", str(s["epochs_run"])]
        assert s["stop_reason"] in row and f"{s['test_accuracy']:.4f}" in row
        assert f"{s['best_val_loss']:.4f}" in row and str(s["best_epoch"]) in row
        assert m["value"] == pytest.approx(float(lr)) and m["hyperparameter"] == "learning_rate"
        assert len(m["steps"]["loss"]) == len(m["steps"]["learning_rate"]) == s["steps_run"]
        assert s["steps_run"] == s["epochs_run"] * metrics["config"]["steps_per_epoch"]
        assert len(m["epochs"]) == s["epochs_run"] and s["test_accuracy"] > 0.8
    png = (out / "curves.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000

    # Members stop one by one, and the loop ends when the last one has stopped.
    stops = [m["summary"]["epochs_run"] for m in members]
    assert len(set(stops)) == 3, stops
    assert all(m["summary"]["stop_reason"] == "patience exhausted" for m in members)
    assert metrics["summary"]["epochs_run"] == max(stops) < metrics["config"]["epochs"]
    assert "epochs run:     7 of 8 (3 of 3 members stopped early)" in stdout

    # A stopped member is frozen: its validation loss (every member is evaluated every epoch)
    # no longer changes, bitwise, and its own logs end at its stop.
    pop = metrics["population"]
    val = np.asarray(pop["val_loss"])  # [epoch, member]
    for m in members:
        i, stop = m["member"], m["summary"]["epochs_run"]
        after = val[stop - 1:, i]
        assert len(after) >= 1 + (stop < max(stops)) and np.all(after == after[0]), (i, after)
        assert [r[i] for r in pop["running"]] == [e <= stop for e in pop["epoch"]]
        assert m["epochs"][-1]["epoch"] == stop and m["epochs"][-1]["val_loss"] == val[stop - 1, i]
    last_epoch_line = [ln for ln in lines if ln.startswith("epoch ")][-1]
    assert last_epoch_line.count(" stopped") == 2

    # Each member equals the same configuration run alone: the proof that one vmapped program
    # trains each member as its own run would (same per-step losses to float32 rounding, same
    # learning rates, same stop epoch, reason and best epoch).
    for m, lr in zip(members, POP_LRS):
        solo_out = tmp_path / f"solo-{lr}"
        assert main(["train", "--learning-rate", lr, *POP_ARGS, "--out", str(solo_out)]) == 0
        solo = strict_json(solo_out / "metrics.json")
        for key in ("epochs_run", "steps_run", "stop_reason", "best_epoch"):
            assert m["summary"][key] == solo["summary"][key], (lr, key)
        np.testing.assert_allclose(m["steps"]["loss"], solo["steps"]["loss"], rtol=1e-5)
        np.testing.assert_allclose(m["steps"]["learning_rate"], solo["steps"]["learning_rate"],
                                   rtol=1e-7)
        np.testing.assert_allclose([e["val_loss"] for e in m["epochs"]],
                                   [e["val_loss"] for e in solo["epochs"]], rtol=1e-5)
        assert m["summary"]["test_accuracy"] == pytest.approx(solo["summary"]["test_accuracy"],
                                                              abs=1 / 270 + 1e-9)
    capsys.readouterr()


def test_weight_decay_population_and_plateau_together(tmp_path, capsys):
    # Member 0 (sgd at 1e-6) cannot lower the training loss by 0.01 an epoch: its learning
    # rate halves after every epoch but the first; member 1 (0.05) keeps improving.
    out = tmp_path / "pop_rop"
    assert main(["train", "--optimizer", "sgd", "--population", "learning-rate=1e-6,0.05",
                 "--schedule", "constant", "--warmup-steps", "0", "--reduce-on-plateau",
                 "--plateau-patience", "1", "--plateau-min-delta", "0.01", "--epochs", "3",
                 "--out", str(out)]) == 0
    assert "lr scale" in capsys.readouterr().out
    metrics = strict_json(out / "metrics.json")
    spe = metrics["config"]["steps_per_epoch"]
    slow, fast = metrics["members"]
    lr = np.asarray(slow["steps"]["learning_rate"]).reshape(3, spe)
    # The reducing update (the last of an epoch) already uses the new scale.
    np.testing.assert_allclose(lr[0], 1e-6, rtol=1e-6)
    np.testing.assert_allclose(lr[1, :-1], 1e-6, rtol=1e-6)
    np.testing.assert_allclose(lr[1:, -1], [5e-7, 2.5e-7], rtol=1e-6)
    np.testing.assert_allclose(lr[2, :-1], 5e-7, rtol=1e-6)
    assert slow["summary"]["plateau_scale"] == 0.25 and fast["summary"]["plateau_scale"] == 1.0
    np.testing.assert_allclose(fast["steps"]["learning_rate"], 0.05, rtol=1e-6)
    # A weight-decay population: every member has the same learning rate, its own decay.
    out = tmp_path / "pop_wd"
    assert main(["train", "--population", "weight_decay=0,0.5", "--epochs", "2",
                 "--dataset", "wine", "--out", str(out)]) == 0
    assert "weight_decay" in capsys.readouterr().out
    wd = strict_json(out / "metrics.json")["members"]
    assert [m["value"] for m in wd] == [0.0, 0.5]
    assert wd[0]["steps"]["learning_rate"] == wd[1]["steps"]["learning_rate"]
    assert wd[0]["steps"]["loss"][1:] != wd[1]["steps"]["loss"][1:]


def test_reduce_on_plateau_reduces_and_matches_optax(tmp_path, capsys):
    out = tmp_path / "rop"
    assert main(["train", "--optimizer", "sgd", "--learning-rate", "1e-6", "--schedule",
                 "constant", "--warmup-steps", "0", "--reduce-on-plateau", "--plateau-patience",
                 "1", "--plateau-min-delta", "0.01", "--epochs", "3", "--compare", "optax",
                 "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "plateau scale:  0.25" in stdout
    metrics = strict_json(out / "metrics.json")
    assert metrics["config"]["reduce_on_plateau"]["accumulation_size"] == \
        metrics["config"]["steps_per_epoch"]
    lr = np.asarray(metrics["steps"]["learning_rate"])
    spe = metrics["config"]["steps_per_epoch"]
    # One decision per epoch: the logged (effective) learning rate drops by the factor 0.5
    # on the last update of epochs 2 and 3, and stays there.
    drops = np.flatnonzero(lr[1:] != lr[:-1]) + 1
    assert drops.tolist() == [2 * spe - 1, 3 * spe - 1]
    np.testing.assert_allclose(lr[drops] / lr[drops - 1], 0.5, rtol=1e-6)
    assert metrics["summary"]["plateau_scale"] == 0.25
    # optax.contrib.reduce_on_plateau, configured alike, replays the same run.
    assert metrics["compare"]["max_rel_loss_diff"] <= 1e-5


@pytest.mark.parametrize("args, message", [
    (["--population", "learning_rate"], "expected NAME=V1,V2,..."),
    (["--population", "momentum=0.9,0.99"], "unknown hyperparameter 'momentum'"),
    (["--population", "learning_rate="], "expected comma-separated numbers"),
    (["--population", "learning_rate=1e-3,,1e-2"], "expected comma-separated numbers"),
    (["--population", "learning_rate=1e-3,fast"], "invalid float value: 'fast'"),
    (["--population", "learning_rate=1e-3,0"], "must be > 0"),
    (["--population", "learning_rate=nan"], "must be finite"),
    (["--population", "weight_decay=-1e-4"], "must be >= 0"),
    (["--population", "weight_decay=1e-4,1e-3", "--optimizer", "sgd"],
     "needs --optimizer adamw"),
    (["--weight-decay", "0.1", "--optimizer", "sgd"], "--weight-decay needs --optimizer adamw"),
    (["--weight-decay", "0", "--optimizer", "adam"], "--weight-decay needs --optimizer adamw"),
    (["--population", "learning_rate=1e-3,1e-2", "--compare", "optax"],
     "cannot be combined with --population"),
    (["--plateau-factor", "0.3"], "need --reduce-on-plateau"),
    (["--reduce-on-plateau", "--plateau-factor", "1"], "must be in (0, 1)"),
])
def test_bad_population_and_plateau_options(args, message, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["train", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]  # argparse prints its usage first, as for any option
    assert line.startswith("jopt train: error: ") and message in line, line
    assert "Traceback" not in err and not out.exists()


# ---------------------------------------------------------------------------------------------
# Adversarial regressions: ranges, interruption, late usage errors, unclear data errors.


@pytest.mark.parametrize("value", ["1e39", "-1e39"])
@pytest.mark.parametrize("name", ["learning_rate", "weight_decay"])
def test_population_values_beyond_float32_are_refused(name, value, tmp_path, capsys):
    # learning_rate=1e39 trained with an infinite rate and died in matplotlib.
    out = tmp_path / "o"
    assert main(["train", "--population", f"{name}=1e-3,{value}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert line.startswith("jopt train: error: ") and "Traceback" not in err
    assert ("largest float32" in line) or ("must be > 0" in line) or ("must be >= 0" in line)
    assert not out.exists()


def test_late_usage_error_leaves_no_empty_folder(tmp_path, monkeypatch, capsys):
    # --compare optax without optax: the error came after the output folder was made, and
    # left it empty. (flax imports optax: load flax.nnx first, then make optax unavailable.)
    from flax import nnx  # noqa: F401

    monkeypatch.setitem(sys.modules, "optax", None)
    out = tmp_path / "a" / "b"
    assert main(["train", "--epochs", "1", "--compare", "optax", "--out", str(out)]) == 2
    assert "--compare optax needs optax" in _error_line(capsys)
    assert not out.exists() and not (tmp_path / "a").exists()


def test_ctrl_c_writes_what_was_trained_and_exits_130(tmp_path):
    # Ctrl-C gave a raw KeyboardInterrupt traceback and left an empty output folder.
    import signal
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-u", "-m", "jopt", "train", "--epochs", "400",
                             "--patience", "400", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen += line
        if line.startswith("epoch   2"):
            break
    else:  # pragma: no cover - a timeout is a failure
        proc.kill()
        pytest.fail(f"no epoch line in time: {seen}")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "interrupted: wrote what was trained" in stderr and str(out) in stderr
    metrics = strict_json(out / "metrics.json")
    assert metrics["summary"]["stop_reason"] == "interrupted (Ctrl-C)"
    assert metrics["summary"]["epochs_run"] >= 2
    assert len(metrics["steps"]["loss"]) >= 2 * metrics["config"]["steps_per_epoch"]
    assert (out / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_ctrl_c_in_a_population_run(tmp_path, monkeypatch, capsys):
    # In-process: the third epoch's validation raises KeyboardInterrupt, as Ctrl-C would.
    import jopt.cli._population as population

    calls = {"n": 0}
    real = population.np.stack

    def stack(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(population.np, "stack", stack)
    out = tmp_path / "pop"
    code = main(["train", "--dataset", "wine", "--epochs", "30", "--population",
                 "learning_rate=1e-3,1e-2", "--out", str(out)])
    monkeypatch.undo()
    assert code == 130
    metrics = strict_json(out / "metrics.json")
    assert {m["summary"]["stop_reason"] for m in metrics["members"]} == {"interrupted (Ctrl-C)"}
    assert "interrupted" in capsys.readouterr().err


def test_unclear_data_errors_are_named(tmp_path, capsys):
    import zipfile

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)), np.arange(40) % 2
    # A feature constant up to rounding: standardizing it amplifies rounding noise (to 1e6
    # here, past float32 for larger values), and the run was reported as diverged.
    noisy = np.concatenate([X, np.full((40, 1), 1e20)], axis=1)
    noisy[::7, -1] *= 1 + 1e-15
    path = _npz(tmp_path / "noisy.npz", X=noisy, y=y)
    assert main(["train", "--data", path, "--out", str(tmp_path / "o1")]) == 2
    line = _error_line(capsys)
    assert "feature 4" in line and "constant up to rounding" in line, line
    # A truncated member was blamed on object arrays.
    good = _npz(tmp_path / "good.npz", X=X, y=y)
    with zipfile.ZipFile(good) as z:
        xdata, ydata = z.read("X.npy"), z.read("y.npy")
    with zipfile.ZipFile(tmp_path / "trunc.npz", "w") as z:
        z.writestr("X.npy", xdata[:100])
        z.writestr("y.npy", ydata)
    assert main(["train", "--data", str(tmp_path / "trunc.npz"),
                 "--out", str(tmp_path / "o2")]) == 2
    line = _error_line(capsys)
    assert "truncated or corrupt" in line and "object" not in line, line
    # A file that is no archive: said in jopt's words, without numpy's advice on pickles.
    (tmp_path / "text.npz").write_text("not numpy at all")
    assert main(["train", "--data", str(tmp_path / "text.npz"),
                 "--out", str(tmp_path / "o3")]) == 2
    line = _error_line(capsys)
    assert "is not an .npz archive" in line and "pickle" not in line, line
