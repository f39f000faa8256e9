"""The data contract: task and sizes declared or read off one batch, capabilities asked for, one line where
nothing can tell; and no caller outside it reads a data module's attributes by name."""

import re

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from litlab.checks import check_arguments
from litlab.data.contract import (
    TaskMismatch,
    WholeSplits,
    has_split,
    normalisation,
    problem,
    provides,
    record,
    sample,
    split_declared,
    whole_splits,
)
from litlab.data.temperature import TemperatureData
from litlab.errors import ConfigError
from tests.conftest import ROOT

ALL = ["regression", "binary", "multiclass"]


class Pairs(L.LightningDataModule):
    """A module as Lightning's docs teach, over given tensors: training and (maybe) validation loaders."""

    def __init__(self, x, y, val: bool = True, batch=None):
        super().__init__()
        self.x, self.y, self.val, self.batch = x, y, val, batch

    def train_dataloader(self):
        if self.batch is not None:
            return [self.batch]
        return DataLoader(TensorDataset(self.x, self.y), batch_size=4, shuffle=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=4) if self.val else []


def test_task_and_sizes_come_from_one_training_batch():
    x = torch.randn(10, 3)
    found = problem(Pairs(x, torch.randn(10, 2)), {}, ALL)
    assert (found.task, found.in_features, found.out_features) == ("regression", 3, 2)
    assert found.source == "task, in_features and out_features from one training batch"
    assert problem(Pairs(x, torch.randn(10)), {}, ALL).out_features == 1  # per-row numbers
    flags = Pairs(x, (torch.arange(10) % 2).float())
    assert problem(flags, {}, ["binary", "multiclass"]).task == "binary"  # the model decides
    assert problem(flags, {}, ["regression"]).task == "regression"
    assert problem(flags, {"task": "binary"}, ALL).task == "binary"  # declared in its YAML


def test_what_one_batch_cannot_tell_is_one_line_naming_the_key():
    x = torch.randn(10, 3)
    with pytest.raises(ConfigError, match="targets are all 0 or 1: .* add task: binary"):
        problem(Pairs(x, (torch.arange(10) % 2).float()), {}, ALL)
    labels = Pairs(x, torch.arange(10) % 3)
    with pytest.raises(ConfigError, match="add num_classes: <count> to its YAML"):
        problem(labels, {}, ALL)
    assert problem(labels, {"num_classes": 3}, ALL).out_features == 3
    labels.num_classes = 4  # Lightning's docs give DataModules a num_classes attribute
    assert (problem(labels, {}, ALL).task, problem(labels, {}, ALL).out_features) == ("multiclass", 4)
    with pytest.raises(TaskMismatch, match="poses a multiclass task"):
        problem(labels, {}, ["regression"])
    with pytest.raises(ConfigError, match=r"inputs are torch.float64 \[4, 3\]: .* return x.float\(\)"):
        problem(Pairs(x.double(), torch.randn(10)), {}, ALL)
    with pytest.raises(ConfigError, match="not \\(inputs, targets\\) tensor pairs"):
        problem(Pairs(x, x, batch={"x": x}), {}, ALL)


def test_yaml_keys_declare_the_problem_where_the_module_takes_no_such_argument():
    cfg = OmegaConf.create({"seed": 3, "data": {"_target_": "m.Sines", "n": "${seed}", "task": "binary"}})
    built, declared = split_declared(cfg.data, {"n": int})
    assert declared == {"task": "binary"} and OmegaConf.to_container(built) == {"_target_": "m.Sines", "n": 3}
    assert split_declared(cfg.data, {"n": int, "task": str})[1] == {}  # its own argument: passed on
    node = OmegaConf.create({"_target_": "tests.test_contract.Pairs", "x": None, "y": None, "task": "text"})
    with pytest.raises(ConfigError, match="data.task=text is not a task"):
        check_arguments("data", node)
    node.task, node.out_features = "regression", 0
    with pytest.raises(ConfigError, match="data.out_features=0 must be a whole number >= 1"):
        check_arguments("data", node)


def test_capabilities_are_asked_for_not_assumed():
    x, y = torch.randn(10, 3), torch.randn(10, 1)
    plain, ours = Pairs(x, y, val=False), TemperatureData(val_fraction=0.2)
    ours.setup()
    assert not has_split(plain, "val") and not has_split(plain, "test") and has_split(ours, "val")
    assert (
        whole_splits(plain) is None
        and normalisation(plain) is None
        and record(plain) == {"index_inputs": False}
    )
    kept = record(ours)
    assert kept["x_shift"] == ours.x_shift.tolist() and kept["x_scale"] == ours.x_scale.tolist()
    held_x, held_y = sample(Pairs(x, y), "val", 6)  # a validation loader keeps its order: the first rows
    assert torch.equal(held_x, x[:6]) and torch.equal(held_y, y[:6])


CONTRACT_ATTRIBUTES = (
    "splits|x_shift|x_scale|full_batch|batches_per_epoch|serve_steps|model_kwargs|describe|offered|pose|"
    "index_inputs|group|epochs_per_item|num_classes|classes"
)


def test_no_caller_reads_data_attributes_by_name():
    """Outside data/ (the data modules and the contract), code asks through litlab.data.contract."""
    pattern = re.compile(rf"\b(data|datamodule)\.({CONTRACT_ATTRIBUTES})\b")
    callers = [p for p in (ROOT / "src").rglob("*.py") if "data" not in p.relative_to(ROOT / "src").parts]
    found = [
        f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
        for p in [*callers, *(ROOT / "scripts").glob("*.py"), ROOT / "train.py"]
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, found


def test_a_module_s_submodules_count_as_its_members():
    """Python 3.12's isinstance on a Protocol looks members up statically and misses an nn.Module's
    submodules (`net`): provides() asks hasattr, on every Python."""
    from litlab.models.task import Model, TaskModel
    from litlab.nets import Linear

    model = TaskModel(Linear, "regression", 2, 1)
    assert provides(model, Model) and not provides(torch.nn.Linear(2, 1), Model)
    assert provides(TemperatureData(), WholeSplits) and not provides(Pairs(None, None), WholeSplits)
