"""LightningDataModules for small data served as whole tensor batches."""
