"""litlab: linear and logistic regression experiments with Lightning and Hydra."""
