"""Datasets (one file per family), albumentations transforms and the DataModule."""
