"""litlab: linear and logistic regression experiments with Lightning and Hydra.

From Python (a notebook): `from litlab import config, fit` (litlab/api.py); imported when first used, so
that train.py answers a mistake before torch is imported."""


def __getattr__(name: str):
    if name in ("config", "fit", "Run"):
        from litlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'litlab' has no attribute {name!r}")
