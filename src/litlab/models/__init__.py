"""LightningModules: one per network, the task picks loss and metrics."""
