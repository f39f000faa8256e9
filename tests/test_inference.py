"""eval and predict from a run directory: the logged metrics come back, predictions are in original units."""

import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from litlab.answers import read_csv
from litlab.checkpoints import load
from litlab.errors import ConfigError, one_line
from litlab.inference import evaluate, export, predict
from litlab.train import train
from tests.conftest import CONF, ROOT, compose_train, run_train


def compose_entry(root, name: str, *overrides: str):
    """The config `python <name>.py <overrides>` would run, writing below root."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=[f"paths.root_dir={root}", *overrides])
    cfg.paths.output_dir = str(root / name)
    (root / name).mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture(scope="module")
def temperature_run(tmp_path_factory):
    """The book's fit (t_un = 0.1 t_u, 5000 epochs of SGD) with 2 of 11 points held out."""
    root = tmp_path_factory.mktemp("temperature")
    train(compose_train(root, "experiment=book_temperature", "trainer=cpu", "data.val_fraction=0.2"))
    return root / "run"


@pytest.mark.slow
def test_eval_reproduces_the_metrics_the_run_logged(tmp_path):
    train_cfg = compose_train(tmp_path, "data=regression", "data.preset=noisy100", "+data.test_fraction=0.2")
    train_cfg.trainer.max_epochs = 200
    train(train_cfg)
    logged = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    metrics = evaluate(compose_entry(tmp_path, "eval", f"ckpt_path={tmp_path / 'run'}", "trainer=cpu"))
    assert {"val/loss", "val/r2", "test/loss", "test/mae"} <= set(metrics)
    for key in ("val/loss", "val/mae", "val/r2"):
        assert metrics[key] == pytest.approx(logged[key], rel=1e-6), key
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"] == metrics


def test_predict_on_the_temperature_run_answers_in_celsius(temperature_run, tmp_path):
    state = load(temperature_run / "checkpoints" / "last.ckpt")["state_dict"]
    w, b = state["net.weight"].item(), state["net.bias"].item()
    assert w == pytest.approx(5.37, abs=0.2) and b == pytest.approx(-17.3, abs=1.5)  # the book's w, b
    table = predict(
        compose_entry(tmp_path, "predict", f"ckpt_path={temperature_run}", "inputs=[[81.9],[35.7]]")
    )
    expected = [w * 0.1 * t_u + b for t_u in (81.9, 35.7)]  # the model saw 0.1 * t_u
    assert table["prediction"].tolist() == pytest.approx(expected, rel=1e-5)
    assert table["prediction"][0] == pytest.approx(28.0, abs=2.5)  # the thermometer read 28 C at 81.9
    assert table.columns.tolist() == ["t_u", "prediction"]  # the data's name for its input


def test_predict_from_a_csv_writes_predictions_beside_it(temperature_run, tmp_path):
    csv = tmp_path / "readings.csv"
    csv.write_text("t_u\n35.7\n55.9\n81.9\n")
    cfg = compose_entry(tmp_path, "predict", f"ckpt_path={temperature_run}", f"input_file={csv}")
    table = predict(cfg)
    written = pd.read_csv(tmp_path / "readings.predictions.csv")
    assert written.columns.tolist() == ["t_u", "prediction"]
    assert written["t_u"].tolist() == [35.7, 55.9, 81.9]
    assert written["prediction"].tolist() == pytest.approx(table["prediction"].tolist())
    assert written["prediction"].is_monotonic_increasing


@pytest.mark.slow
def test_predict_classification_gives_the_class_and_its_probability(tmp_path):
    train(
        compose_train(
            tmp_path,
            "model=logistic",
            "data.preset=toy6",
            "data.val_fraction=0",
            "trainer=cpu",
            "optimized_metric=train/loss",
            "trainer.max_epochs=500",
            "optimizer.lr=0.5",
        )
    )
    inputs = "inputs=[[1,2],[6,2]]"  # the first and last of the six points: class 0 and class 1
    table = predict(compose_entry(tmp_path, "predict", f"ckpt_path={tmp_path / 'run'}", inputs))
    assert table["class"].tolist() == [0, 1]
    assert ((table["probability"] > 0.5) & (table["probability"] <= 1)).all()


def write_animals(path):
    """A table of three classes named by words, told apart by its size column."""
    rows = [(i % 3 + 0.1 * (i % 7), i % 5, ("cat", "dog", "eel")[i % 3]) for i in range(60)]
    path.write_text("size,noise,animal\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))


@pytest.mark.slow
def test_predict_names_classes_by_their_labels_and_reads_inputs_by_their_names(tmp_path):
    """A table whose classes are words: predict answers in those words, and reads a file's columns by the
    names the table gave them (another order, another column beside them)."""
    write_animals(tmp_path / "animals.csv")
    train(
        compose_train(
            tmp_path,
            "data=table",
            f"data.path={tmp_path / 'animals.csv'}",
            "data.target=animal",
            "model=logistic",
            "optimizer=adam",
            "optimizer.lr=0.1",
            "trainer=cpu",
            "trainer.max_epochs=300",
        )
    )
    (tmp_path / "new.csv").write_text("noise,name,size\n1,a,0.1\n2,b,1.2\n3,c,2.3\n")  # name: not an input
    table = predict(
        compose_entry(
            tmp_path, "predict", f"ckpt_path={tmp_path / 'run'}", f"input_file={tmp_path / 'new.csv'}"
        )
    )
    assert table.columns.tolist() == ["size", "noise", "class", "probability"]
    assert table["class"].tolist() == ["cat", "dog", "eel"]
    written = pd.read_csv(tmp_path / "new.predictions.csv")
    assert written["class"].tolist() == ["cat", "dog", "eel"] and written["size"].tolist() == [0.1, 1.2, 2.3]
    (tmp_path / "new.csv").write_text("noise,name,size\nnone,a,0.1\n")
    with pytest.raises(ConfigError, match="new.csv, line 2, column 'noise': 'none' is not a finite number"):
        predict(
            compose_entry(
                tmp_path, "predict", f"ckpt_path={tmp_path / 'run'}", f"input_file={tmp_path / 'new.csv'}"
            )
        )


def test_checkpoint_of_another_model_is_refused_in_one_line(temperature_run, tmp_path):
    other = compose_train(tmp_path, "model=logistic", "trainer=cpu", "trainer.max_epochs=50")
    train(other)
    shutil.copy(
        tmp_path / "run" / "checkpoints" / "last.ckpt", temperature_run / "checkpoints" / "other.ckpt"
    )
    ckpt = temperature_run / "checkpoints" / "other.ckpt"
    with pytest.raises(
        ConfigError, match=r"other.ckpt was made with .*: put .* back \(config.yaml\)"
    ) as error:
        evaluate(compose_entry(tmp_path, "eval", f"ckpt_path={ckpt}"))
    assert "\n" not in str(error.value)
    ckpt.unlink()


@pytest.mark.parametrize(
    "scaling",
    [
        {"_target_": "builtins.open", "file": "VICTIM", "mode": "w"},  # would truncate a file
        {"_target_": "shutil.copyfile", "src": "VICTIM", "dst": "COPY"},  # would write one anywhere
    ],
)
def test_a_crafted_config_yaml_runs_no_code(temperature_run, tmp_path, scaling):
    run = tmp_path / "crafted"
    shutil.copytree(temperature_run, run)
    victim, copy = tmp_path / "victim.txt", tmp_path / "copy.txt"
    victim.write_text("keep me")
    saved = OmegaConf.load(run / "config.yaml")
    saved.data.scaling = {
        k: str(v).replace("VICTIM", str(victim)).replace("COPY", str(copy)) for k, v in scaling.items()
    }
    OmegaConf.save(saved, run / "config.yaml")
    for entry, overrides in (("eval", ()), ("predict", ("inputs=[[81.9]]",))):
        with pytest.raises(
            ConfigError, match=f"names data.scaling._target_={scaling['_target_']}, which is not"
        ):
            (evaluate if entry == "eval" else predict)(
                compose_entry(tmp_path, entry, f"ckpt_path={run}", *overrides)
            )
    assert victim.read_text() == "keep me" and not copy.exists()


def test_wrong_input_width_is_refused(temperature_run, tmp_path):
    with pytest.raises(ConfigError, match=r"inputs have 2 column\(s\) but the model takes 1"):
        predict(compose_entry(tmp_path, "predict", f"ckpt_path={temperature_run}", "inputs=[[1,2]]"))


@pytest.mark.parametrize(
    "inputs,message",
    [
        ("[[1],[2,3]]", r"is not rows of numbers such as \[\[81.9\], \[60.0\]\]"),
        ("[[abc]]", "'abc' is not a finite number that float32 holds"),
        ("[[nan]]", "nan is not a finite number"),
        ("[[inf]]", "inf is not a finite number"),
        ("[[1e308]]", r"1e\+308 is not a finite number that float32 holds"),
        ("[[true]]", "True is not a finite number"),
    ],
)
def test_inputs_that_are_not_rows_of_finite_numbers_are_refused(temperature_run, tmp_path, inputs, message):
    with pytest.raises(ConfigError, match=message):
        predict(compose_entry(tmp_path, "predict", f"ckpt_path={temperature_run}", f"inputs={inputs}"))


def test_an_input_file_that_is_a_directory_is_one_line(temperature_run, tmp_path):
    with pytest.raises(
        ConfigError, match=r"is not a file \(a directory, a pipe, a device\): give a CSV file"
    ):
        predict(compose_entry(tmp_path, "predict", f"ckpt_path={temperature_run}", f"input_file={tmp_path}"))


@pytest.mark.parametrize("entry", ["eval", "predict"])
def test_a_missing_ckpt_path_is_one_line(tmp_path, entry):
    with pytest.raises(ConfigError, match=r"^give ckpt_path=<run dir or a .ckpt inside one>"):
        (evaluate if entry == "eval" else predict)(compose_entry(tmp_path, entry))


@pytest.mark.slow
def test_eval_and_predict_scripts_as_a_user_runs_them(temperature_run, tmp_path):
    args = (f"ckpt_path={temperature_run}", "data.val_fraction=0.5")
    with ThreadPoolExecutor() as pool:  # two processes at once, on two cores
        evaluated = pool.submit(run_train, tmp_path, *args, script="eval.py", check=False)
        predicted = pool.submit(
            run_train, tmp_path, f"ckpt_path={temperature_run}", "inputs=[81.9]", script="predict.py"
        )
    proc = evaluated.result()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: data.val_fraction=0.5 would change the run saved in {temperature_run / 'config.yaml'}; "
        "here you may set trainer.<key>=...: train a new run to change anything else"
    ]
    proc = predicted.result()
    assert "81.9" in proc.stdout and "prediction" in proc.stdout


def test_csv_rows_of_numbers_are_never_taken_for_a_header(tmp_path):
    """A first row that repeats a value ('1.0,1.0') is data: pandas would rename the repeat '1.0.1'."""
    path = tmp_path / "x.csv"
    path.write_text("1.0,1.0\n2.0,3.0\n")
    assert read_csv(path).shape == (2, 2)
    path.write_text("t_u\n81.9\n")
    assert list(read_csv(path).columns) == ["t_u"] and len(read_csv(path)) == 1
    path.write_text("nan,1.0\n2.0,3.0\n")  # nan is a number, not a name: refused as an input, never dropped
    with pytest.raises(ConfigError, match=r"x.csv, line 1, column 1: 'nan' is not a finite number"):
        read_csv(path)
    path.write_text("t_u\n")
    with pytest.raises(ConfigError, match="has a header but no rows"):
        read_csv(path)
    path.write_text("")
    with pytest.raises(ConfigError, match="is empty: one row of numbers per input"):
        read_csv(path)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b"", "is empty: truncated or damaged"),
        (lambda b: b[: len(b) // 3], r"is not a readable checkpoint \(.*\): truncated or damaged\?"),
        (lambda b: bytes(range(256)) * 8, "is not a readable checkpoint"),
    ],
)
def test_an_empty_truncated_or_corrupted_checkpoint_is_one_line(temperature_run, tmp_path, damage, message):
    run = tmp_path / "run"
    shutil.copytree(temperature_run, run)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(damage(ckpt.read_bytes()))
    with pytest.raises(ConfigError, match=message):
        evaluate(compose_entry(tmp_path, "eval", f"ckpt_path={run}"))
    with pytest.raises(ConfigError, match=message):
        train(compose_train(tmp_path, f"resume={run}"))


def test_a_config_yaml_that_is_not_yaml_is_one_line(temperature_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(temperature_run, run)
    (run / "config.yaml").write_text("data: [unclosed\n  x: : :\n")
    with pytest.raises(ConfigError, match=r"config.yaml is not valid YAML at line 2 .*restore it"):
        evaluate(compose_entry(tmp_path, "eval", f"ckpt_path={run}"))


@pytest.mark.slow
def test_resume_with_max_epochs_below_what_was_trained_is_one_line_in_data_epochs(temperature_run, tmp_path):
    # the book fit runs stepping=fast: 500 data epochs a Lightning epoch, so Lightning's own count is 10
    run = tmp_path / "run"
    shutil.copytree(temperature_run, run)
    proc = run_train(tmp_path, f"resume={run}", "trainer.max_epochs=3000", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
        f"error: {run / 'checkpoints' / 'last.ckpt'} has trained 5000 epochs, and trainer.max_epochs=3000 "
        "ends before that: max_epochs counts the run's epochs in all, so give 5000 or more"
    )


def test_an_optimizer_setting_edited_in_config_yaml_is_refused_on_resume(temperature_run, tmp_path):
    # Lightning would restore the optimizer with lr 0.01 while config.yaml and HParams said 0.1
    run = tmp_path / "run"
    shutil.copytree(temperature_run, run)
    saved = OmegaConf.load(run / "config.yaml")
    saved.optimizer.lr = 0.1
    OmegaConf.save(saved, run / "config.yaml")
    with pytest.raises(
        ConfigError, match=r"sets optimizer.lr=0.1, but last.ckpt was made with optimizer.lr=0.01"
    ):
        train(compose_train(tmp_path, f"resume={run}"))


def edited(value: object) -> object:
    """Another value of the same kind: what a hand edit of config.yaml might make of it."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, value[-1]] if value else [1]
    return "edited"


# Honoured edits that would start other processes or wait for other machines (3 nodes): not run here.
LAUNCHES = ("trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy")


@pytest.mark.slow
def test_every_edit_of_a_saved_config_is_honoured_or_refused_in_one_line_and_writes_nothing(tmp_path):
    """Each leaf of an MLP run's config.yaml edited in turn: a key that shapes the result (every key but
    checkpoints.MAY_DIFFER's) is refused in one line naming it by eval, predict and resume alike; with an
    edit of the others eval and predict give the run's answers (or refuse a value they cannot take, in one
    line); the run's files are the same bytes after each."""
    from litlab.checkpoints import MAY_DIFFER, leaves_of
    from tests.test_robustness import tree

    train(compose_train(tmp_path, "model=mlp", "scheduler=step", "trainer.max_epochs=5"))
    run = tmp_path / "run"
    original = (run / "config.yaml").read_text()
    commands = {  # composed once: each edit is of the run's config.yaml, not of the command
        "eval": compose_entry(tmp_path, "eval", f"ckpt_path={run}"),
        "predict": compose_entry(tmp_path, "predict", f"ckpt_path={run}", "inputs=[[81.9],[35.7]]"),
        "resume": compose_train(tmp_path / "again", f"resume={run}"),
    }
    entries = {
        "eval": lambda: evaluate(commands["eval"].copy()),
        "predict": lambda: predict(commands["predict"].copy()).to_dict(),
        "resume": lambda: train(commands["resume"].copy()),
    }
    expected = {entry: entries[entry]() for entry in ("eval", "predict")}
    before = tree(run)
    refused = {entry: 0 for entry in entries}
    for key, value in leaves_of(OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))):
        config = OmegaConf.load(run / "config.yaml")
        OmegaConf.update(config, key, edited(value), merge=False)
        (run / "config.yaml").write_text(OmegaConf.to_yaml(config))
        honoured = any(key == k or key.startswith(f"{k}.") for k in MAY_DIFFER)  # where it is, how watched
        if key in LAUNCHES:
            continue
        try:
            for entry, call in entries.items():
                if honoured and entry == "resume":
                    continue  # honoured: it would train on (trainer.max_epochs), as it should
                try:
                    answer = call()
                except Exception as error:  # any error, as long as it is one line
                    message = one_line(error)
                    assert message is not None and "\n" not in message, f"{entry}, {key}: {error!r}"
                    refused[entry] += not honoured
                    continue
                assert honoured and answer == expected[entry], f"{entry} took an edit of {key}"
        finally:
            (run / "config.yaml").write_text(original)
        assert tree(run) == before, key
    assert min(refused.values()) > 20 and len(set(refused.values())) == 1, refused
    assert entries["eval"]() == expected["eval"]


def test_a_checkpoint_with_weights_that_are_not_finite_is_one_line(temperature_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(temperature_run, run)
    ckpt = run / "checkpoints" / "last.ckpt"
    values = torch.load(ckpt, weights_only=True)
    values["state_dict"]["net.weight"].fill_(float("nan"))
    torch.save(values, ckpt)
    with pytest.raises(ConfigError, match=r"holds weights that are not finite \(net.weight: nan or inf\)"):
        evaluate(compose_entry(tmp_path, "eval", f"ckpt_path={run}"))


def test_a_key_of_an_option_that_sets_none_says_to_choose_an_option():
    from tests.test_checks import composition_error

    message = composition_error("scheduler.gamma=0.9")
    assert message.startswith("scheduler.gamma is not a key of scheduler, which has none here")


EXPORTED = {  # model and data options: every model, every task
    "linear": ("data.val_fraction=0.2",),
    "logistic-binary": ("model=logistic",),
    "logistic-classes": (
        "model=logistic",
        "data=table",
        "data.path={root}/animals.csv",
        "data.target=animal",
    ),
    "mlp": ("model=mlp", "data=regression", "data.preset=generated", "data.features=3"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", EXPORTED)
def test_an_exported_model_answers_as_the_checkpoint_does(tmp_path, case):
    """export.py's model.pt2 on raw inputs equals the checkpoint's predictions (predict.py's Raw) to 1e-6,
    for any number of rows, and predict.py reads it with torch alone."""
    from litlab.answers import onnx_model, predict_exported
    from litlab.inference import predictor

    write_animals(tmp_path / "animals.csv")
    overrides = [o.format(root=tmp_path) for o in EXPORTED[case]]
    train(compose_train(tmp_path, *overrides, "trainer=cpu", "trainer.max_epochs=20"))
    run = tmp_path / "run"
    path = export(compose_entry(tmp_path, "export", f"ckpt_path={run}"))
    assert path == run / "model.pt2"
    _, raw, about = predictor(compose_entry(tmp_path, "predict", f"ckpt_path={run}"))
    program = torch.export.load(path).module()
    for rows in (1, 7, 300):
        x = torch.randn(rows, about["in_features"]) * 30 + 50  # raw inputs, in original units
        with torch.no_grad():
            assert torch.allclose(program(x), raw(x), rtol=0, atol=1e-6)
    inputs = "inputs=" + str([[1.5] * about["in_features"], [80.0] * about["in_features"]]).replace(" ", "")
    answers = predict(compose_entry(tmp_path, "predict", f"ckpt_path={run}", inputs))
    assert predict_exported(compose_entry(tmp_path, "predict", f"ckpt_path={path}", inputs)).equals(answers)
    pytest.importorskip("onnxruntime", reason="the onnx extra: pip install -e '.[onnx]'")
    path = export(compose_entry(tmp_path, "export", f"ckpt_path={run}", "format=onnx"))
    session, _ = onnx_model(path)
    for rows in (1, 7, 300):  # ONNX Runtime's kernels round otherwise than torch's
        x = torch.randn(rows, about["in_features"]) * 30 + 50
        with torch.no_grad():
            assert torch.allclose(torch.from_numpy(session(x.numpy())), raw(x), rtol=0, atol=1e-5)
    onnx = predict_exported(compose_entry(tmp_path, "predict", f"ckpt_path={path}", inputs))
    assert onnx.drop(columns=onnx.columns[-1]).equals(answers.drop(columns=answers.columns[-1]))  # classes


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pt2", "onnx"])
def test_predict_py_on_an_exported_model_imports_no_lightning(temperature_run, tmp_path, kind):
    """model.pt2 answers with torch alone; model.onnx with onnxruntime alone, not even torch."""
    if kind == "onnx":
        pytest.importorskip("onnxruntime", reason="the onnx extra: pip install -e '.[onnx]'")
    run = tmp_path / "run"
    shutil.copytree(temperature_run, run)
    path = export(compose_entry(tmp_path, "export", f"ckpt_path={run}", f"format={kind}"))
    command = [sys.executable, "-X", "importtime", str(ROOT / "predict.py"), f"ckpt_path={path}"]
    proc = subprocess.run(
        [*command, "inputs=[[81.9]]", f"paths.root_dir={tmp_path}"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "t_u  prediction" in proc.stdout, proc.stderr[-2000:]
    imported = {m.split(".")[0] for m in re.findall(r"^import time:.*\| +(\S+)$", proc.stderr, re.MULTILINE)}
    assert "lightning" not in imported and ("torch" in imported) == (kind == "pt2")
