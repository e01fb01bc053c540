"""Datasets, few-shot sampling, transforms and the DataModule."""
