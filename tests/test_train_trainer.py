"""The training loop: fresh runs, exact resume, bad input caught before work."""

import json

import pytest
import torch

from hrm_text.config import ConfigError, load_config
from hrm_text.train.trainer import train

from conftest import tiny_train_overrides


def test_trained_tiny_checkpoint_exists_and_learns(trained_tiny):
    assert (trained_tiny / "COMPLETE").is_file()
    lines = [json.loads(l) for l in (trained_tiny.parent / "metrics.jsonl").read_text().splitlines()]
    losses = [l["train/loss"] for l in lines if "train/loss" in l]
    assert losses[-1] < losses[0] - 1.0, losses
