"""A LightningDataModule written the way Lightning's docs teach it, knowing nothing of litlab: a Dataset,
random_split with a seeded generator, DataLoaders with workers (tests/test_own_data.py)."""

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, random_split
from torchdata.stateful_dataloader import StatefulDataLoader


class SineDataset(Dataset):
    """y = 2 sin(x) + x / 2 + noise, for x in [-3, 3] (in units of a few hundred); x and y [n, 1]."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = 200 + 100 * torch.rand(n, 1, generator=g)
        u = (self.x[:, 0] - 250) / 50 * 3
        self.y = (2 * torch.sin(u) + u / 2 + 0.1 * torch.randn(n, generator=g)).unsqueeze(1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class Sines(L.LightningDataModule):
    """Inputs standardised with the training rows' mean and spread (x_shift, x_scale: predict.py then takes
    raw inputs; standardise=False: raw inputs, and no statistics); a StatefulDataLoader resumes inside an
    epoch, a plain DataLoader (stateful=False) cannot. classes > 0: y as that many classes of equal width
    (int64 labels, and a num_classes attribute, as Lightning's docs give their DataModules)."""

    def __init__(
        self,
        n: int = 640,
        batch_size: int = 32,
        num_workers: int = 2,
        stateful: bool = True,
        standardise: bool = True,
        classes: int = 0,
    ):
        super().__init__()
        self.n, self.batch_size, self.num_workers = n, batch_size, num_workers
        self.stateful, self.standardise = stateful, standardise
        if classes:
            self.num_classes = classes

    def setup(self, stage: str | None = None) -> None:
        data = SineDataset(self.n)
        if getattr(self, "num_classes", 0):
            edges = torch.linspace(float(data.y.min()), float(data.y.max()), self.num_classes + 1)[1:-1]
            data.y = torch.bucketize(data.y[:, 0], edges)  # class labels [n]
        split = torch.Generator().manual_seed(1)
        self.train_set, self.val_set = random_split(data, [0.8, 0.2], generator=split)
        if self.standardise:
            train_x = data.x[self.train_set.indices]
            self.x_shift, self.x_scale = train_x.mean(0), train_x.std(0)
            data.x = (data.x - self.x_shift) / self.x_scale

    def train_dataloader(self) -> DataLoader:
        loader = StatefulDataLoader if self.stateful else DataLoader
        return loader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)
