"""data=table: a CSV, TSV or Parquet file of one's own, without code; the wine and bike files read through it
give the numbers of data=wine and data=bike."""

import json

import pyarrow as pa
import pytest
import torch
from pyarrow import csv, parquet

from litlab.checks import TASKS
from litlab.data.contract import choose_task
from litlab.data.table import TableData
from litlab.errors import ConfigError
from litlab.train import train
from tests.conftest import SHARED_DATA, compose_train, needs_real_data

WINE = SHARED_DATA / "tabular-wine" / "winequality-white.csv"
BIKE = SHARED_DATA / "bike-sharing-dataset" / "hour-fixed.csv"
BIKE_COLUMNS = (  # data=bike's hourly inputs: one-hot levels, flags, weather, in its order
    "data.features=[season,mnth,hr,weekday,weathersit,yr,holiday,workingday,temp,atemp,hum,windspeed]",
    "data.categorical=[season,mnth,hr,weekday,weathersit]",
    "data.contiguous=true",  # bike is split by time
)


def table(path, tasks=TASKS, **kwargs) -> TableData:
    data = TableData(str(path), **kwargs)
    choose_task(data, list(tasks))
    data.setup()
    return data


def write(path, text: str):
    path.write_text(text)
    return path


def test_the_target_s_values_pose_the_task(tmp_path):
    numbers = write(tmp_path / "a.csv", "x,y\n" + "".join(f"{i},{i * 0.5 + 0.1}\n" for i in range(10)))
    counts = write(tmp_path / "b.tsv", "x\ty\n" + "".join(f"{i}\t{i % 3}\n" for i in range(12)))
    flags = write(tmp_path / "c.csv", "x;y\n" + "".join(f"{i};{i % 2}\n" for i in range(12)))
    words = write(tmp_path / "d.csv", "x,y\n" + "".join(f"{i},{'abc'[i % 3]}\n" for i in range(12)))
    pairs = write(tmp_path / "e.csv", "x,y\n" + "".join(f"{i},{['no', 'yes'][i % 2]}\n" for i in range(12)))
    offered = {
        p.name: TableData(str(p), target="y").offered() for p in (numbers, counts, flags, words, pairs)
    }
    assert offered == {
        "a.csv": ["regression"],
        "b.tsv": ["regression", "multiclass"],
        "c.csv": ["binary", "regression"],
        "d.csv": ["multiclass"],
        "e.csv": ["binary", "multiclass"],
    }
    classes = table(words, target="y")
    assert classes.task == "multiclass" and classes.classes == ["a", "b", "c"] and classes.out_features == 3
    assert table(counts, target="y", task="multiclass").out_features == 3  # data.task= chooses
    binary = table(pairs, ["binary", "multiclass"], target="y")
    y = torch.cat([binary.splits[s][1] for s in ("train", "val")])
    assert binary.task == "binary" and y.dtype == torch.float32 and set(y.flatten().tolist()) == {0.0, 1.0}


def test_categorical_columns_are_one_hot_in_place_and_words_are_left_out(tmp_path):
    path = write(
        tmp_path / "t.csv",
        "a,city,b,name,y\n" + "".join(f"{i},{'xyz'[i % 3]},{i},n{i},{i}\n" for i in range(9)),
    )
    data = table(path, target="y", categorical=["city"], scaling="none", val_fraction=0.0)
    assert data.input_names == ["a", "city=x", "city=y", "city=z", "b"]  # name: words, not a feature
    x = data.splits["train"][0]
    assert x.shape == (9, 5) and torch.equal(x[:, 1:4].sum(1), torch.ones(9))


@pytest.mark.parametrize(
    "text,kwargs,message",
    [
        ("x,y\n1,2\nabc,4\n5,6\n", {"features": ["x"]}, "line 3, column 'x': 'abc' is not a number"),
        ("x,y\n1,2\n,4\n5,6\n", {}, "line 3, column 'x': '' is not a number"),
        ("x,y\n1,2\n3,nan\n", {}, "line 3, column 'y': 'nan' is not a finite number"),
        ("x,y\n1,2\n3,4,5\n", {}, "line 3 has 3 cells and the header 2"),
        ("x,y\n1,2\n3,4\n", {"target": "z"}, "data.target=z is not a column of"),
        ("x,y\n1,2\n3,4\n", {"features": ["w"]}, "data.features: w is not a column of"),
        ("x,y\n1,2\n3,4\n", {"features": ["x", "y"]}, "data.target=y is also a feature"),
        ("x,y\n", {}, "has a header but no rows"),
        ("x,y\n1,2\n3,4\n", {}, "data.val_fraction=0.2 of 2 rows holds out 0"),
        ("x,y\n1,a\n2,a\n3,b\n4,a\n5,c\n6,c\n", {}, "class 'b' has only 1 row"),
        ("x,y\n" + "1,a\n" * 10, {}, "its multiclass target has one class in all 10 rows"),
        ("x,y\n" + "1,0\n" * 10, {"task": "multiclass"}, "its multiclass target has one class in all 10"),
        ("x,y\n1,2\n" + '"' + "1" * 200_000 + '",3\n', {}, "line 3 is not a row of a ','-separated table"),
    ],
)
def test_bad_tables_are_one_line(tmp_path, text, kwargs, message):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as e:
        table(path, **{"target": "y", **kwargs})
    assert "\n" not in str(e.value)


def test_a_table_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("x,y\n1,2\n3,4\n5,\xe96\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        table(path, target="y")


def run_metrics(tmp_path, name: str, *overrides: str) -> dict:
    cfg = compose_train(tmp_path / name, "trainer=cpu", "trainer.max_epochs=40", "callbacks=none", *overrides)
    train(cfg)
    return json.loads((tmp_path / name / "run" / "metrics.json").read_text())["metrics"]


@needs_real_data
@pytest.mark.slow
@pytest.mark.parametrize("model", ["linear", "logistic"])
def test_the_wine_file_as_a_table_csv_or_parquet_gives_data_wine_s_numbers(tmp_path, model):
    """logistic: quality's 7 values as classes; linear: quality as a number."""
    columns = csv.read_csv(WINE, parse_options=csv.ParseOptions(delimiter=";"))
    parquet.write_table(columns, tmp_path / "wine.parquet")
    common = (f"model={model}", "data.batch_size=256")
    wine = run_metrics(tmp_path, "wine", "data=wine", "data.target=quality", *common)
    as_csv = run_metrics(tmp_path, "csv", "data=table", f"data.path={WINE}", "data.target=quality", *common)
    as_parquet = run_metrics(
        tmp_path,
        "parquet",
        "data=table",
        f"data.path={tmp_path / 'wine.parquet'}",
        "data.target=quality",
        *common,
    )
    assert as_csv == wine and as_parquet == wine


@needs_real_data
@pytest.mark.slow
def test_the_bike_file_as_a_table_gives_data_bike_s_numbers(tmp_path):
    bike = run_metrics(tmp_path, "bike", "data=bike", "data.batch_size=2048")
    as_table = run_metrics(
        tmp_path,
        "table",
        "data=table",
        f"data.path={BIKE}",
        "data.target=cnt",
        *BIKE_COLUMNS,
        "data.batch_size=2048",
    )
    assert as_table == bike


def test_parquet_columns_keep_their_types(tmp_path):
    columns = pa.table({"x": [1.5, 2.5, 3.5, 4.5], "kind": ["a", "b", "a", "b"], "y": [0, 1, 1, 0]})
    parquet.write_table(columns, tmp_path / "t.parquet")
    data = table(tmp_path / "t.parquet", ["binary"], target="y", categorical=["kind"], val_fraction=0.0)
    assert data.task == "binary" and data.input_names == ["x", "kind=a", "kind=b"]


def test_a_data_file_whose_target_changed_is_refused_on_resume_and_eval(tmp_path):
    """Same size, same inputs, other targets: the normalisation cannot tell, the checkpoint's hash can."""
    from litlab.inference import evaluate
    from tests.test_inference import compose_entry

    rows = [(i % 7, (i * 37) % 11) for i in range(40)]
    path = write(tmp_path / "t.csv", "x,y\n" + "".join(f"{x},{y}.5\n" for x, y in rows))
    train(compose_train(tmp_path, "data=table", f"data.path={path}", "data.target=y", "trainer.max_epochs=2"))
    write(path, "x,y\n" + "".join(f"{x},{y + 1}.5\n" for x, y in rows))
    with pytest.raises(
        ConfigError, match=r"the data differs from what .*last.ckpt was trained on \(the training"
    ):
        train(compose_train(tmp_path, f"resume={tmp_path / 'run'}", "trainer.max_epochs=3"))
    with pytest.raises(ConfigError, match="the training targets differ"):
        evaluate(compose_entry(tmp_path, "eval", f"ckpt_path={tmp_path / 'run'}"))
