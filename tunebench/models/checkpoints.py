"""Reading weights from local files (never from a hub)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from tunebench.errors import ConfigError


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or torch file; a one-line ConfigError when the
    file is missing, unreadable or holds something else."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path} (pass --pretrained with a local file)")
    try:
        state = _read_state(path)
    except Exception as exc:  # pickle, zip and safetensors errors alike: the file is not usable
        raise ConfigError(
            f"cannot read {path} as a state dict ({type(exc).__name__}); save one with "
            "torch.save(model.state_dict(), ...) or safetensors (TorchScript archives are not read)"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} holds a {type(state).__name__} that is not a state dict "
                          "(names mapped to tensors)")
    return state


def _read_state(path: Path):
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def state_mismatches(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    """What keeps ``state`` from loading strictly where ``expected`` is: '' when nothing."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if reshaped:
        k = reshaped[0]
        parts.append(
            f"{len(reshaped)} of another shape (e.g. {k}: "
            f"{tuple(state[k].shape)} vs {tuple(expected[k].shape)})"
        )
    return ", ".join(parts)


def load_checkpoint_strictly(model: torch.nn.Module, path: str | Path, what: str) -> None:
    """Load ``path`` into ``model``, every key and shape matching; a one-line ConfigError
    naming ``what`` the model is when the checkpoint was saved from something else."""
    state = load_state_file(path)
    problems = state_mismatches(state, model.state_dict())
    if problems:
        raise ConfigError(f"checkpoint {path} does not fit {what}: {problems}; "
                          f"pass a checkpoint saved from {what}")
    model.load_state_dict(state, strict=True)


def file_digest(path: str | Path, length: int = 16) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]
