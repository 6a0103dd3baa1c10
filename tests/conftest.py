"""Shared fixtures: a private cache dir per test session and the tiny toy backbone."""

from __future__ import annotations

import copy
import os

import pytest
import torch

os.environ.setdefault("TUNEBENCH_NO_PROGRESS", "1")
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's cache (splits, features, built models)."""
    monkeypatch.setenv("TUNEBENCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("TUNEBENCH_STAGING_DIR", str(tmp_path_factory.getbasetemp() / "staging"))


@pytest.fixture(scope="session")
def _tiny_backbone():
    from tunebench.registry import BACKBONES, load_all

    load_all()
    return BACKBONES.get("tiny-clip")(None)


@pytest.fixture
def tiny_backbone(_tiny_backbone):
    """A fresh copy: methods may change weights or attach hooks."""
    return copy.deepcopy(_tiny_backbone)


@pytest.fixture
def tiny_classes():
    from tunebench.datasets import load_dataset
    from tunebench.methods.base import ClassPrompts

    dataset = load_dataset("tiny-shapes")
    return ClassPrompts(tuple(dataset.classnames), tuple(dataset.templates))


@pytest.fixture
def one_thread():
    """Toy models gain nothing from a second thread, and on a busy 2-core machine the
    second waits for a core: a test file opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
