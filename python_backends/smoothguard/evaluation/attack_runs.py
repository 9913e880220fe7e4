"""The attacks an evaluation runs: the plan, the computation (in batches, with restarts for the
inputs still unbroken), and the adversarial images saved under OUT/attacks/, replayed only for
the same attack, items and weights."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from smoothguard.evaluation.answering import copy_denoiser
from smoothguard.evaluation.attacks import ALGORITHM_REVISION, AttackSpec, pgd
from smoothguard.evaluation.config import EvalConfig

# Restart r's first step size, as a multiple of the first run's (2 eps): different step sizes
# break different inputs. On the 53 of 497 SynthPOPE items that pgd-8 (100 steps, 2 same-size
# restarts) left unbroken, one more start broke 4 at eps, 5 at eps / 2, 3 with 300 steps.
RESTART_STEP_SCALES = (0.5, 0.25, 1.0)


@dataclass
class AttackRun:
    name: str
    task: str
    spec: AttackSpec
    target: str  # "flip" (yes/no) or "marker"
    # Extra starts for the inputs the undefended model still answers right (or safely) after
    # the first run, as attack evaluations count them: an input is broken if any start breaks
    # it. Each restart has a new random start and its own first step size (RESTART_STEP_SCALES).
    # Per-input, non-EOT attacks only: a universal perturbation has no per-input retry, and EOT
    # aims at the defense, whose answers are too costly to check per start.
    restarts: int = 0
    images: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: float = 0.0


def attack_plan(config: EvalConfig) -> list[AttackRun]:
    eps = lambda k: k / 255  # noqa: E731
    s, e, r = config.steps, config.eot_samples, config.restarts
    plan = [
        AttackRun(f"pgd-{k}", "pope", AttackSpec(eps(k), s), "flip", restarts=r)
        for k in config.pope_eps
    ]
    plan += [
        AttackRun(f"targeted-{k}", "safety", AttackSpec(eps(k), s), "marker", restarts=r)
        for k in config.targeted_eps
    ]
    u = config.universal_eps
    plan.append(
        AttackRun(f"universal-{u}", "safety", AttackSpec(eps(u), s, universal=True), "marker")
    )
    if e > 0:
        # the defense's own noise: its sigma, in its unit
        eot = lambda k: AttackSpec(  # noqa: E731
            eps(k),
            config.eot_steps,
            eot_samples=e,
            sigma=config.sigma,
            noise_unit=config.noise_unit,
        )
        top_pope, top_target = max(config.pope_eps), max(config.targeted_eps)
        plan.append(AttackRun(f"eot-pgd-{top_pope}", "pope", eot(top_pope), "flip"))
        plan.append(AttackRun(f"eot-targeted-{top_target}", "safety", eot(top_target), "marker"))
    return plan


def opposite(answer: str) -> str:
    """The other yes/no answer, in the gold answer's own wording."""
    word = answer.strip().lower().rstrip(".")
    if word not in ("yes", "no"):
        raise ValueError(f"not a yes/no answer: {answer!r}")
    flipped = "no" if word == "yes" else "yes"
    return answer.lower().replace(word, flipped, 1)


def model_fingerprint(model_path: Path) -> str:
    """The weights' identity: a saved attack is only valid for the model it was computed on."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_path).glob("*.safetensors")):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _spec_key(spec: AttackSpec) -> dict[str, Any]:
    """The spec as fingerprints hash it: without `norm` when it is the default "linf", so the
    attacks saved before L2 attacks existed keep their fingerprints and are still replayed."""
    key = dataclasses.asdict(spec)
    if key["norm"] == "linf":
        del key["norm"]
    return key


def _fingerprint(
    run: AttackRun, items: Sequence[Any], model_path: Path, denoiser: Path | None = None
) -> str:
    key: dict[str, Any] = {}
    if denoiser is not None and run.spec.eot_samples > 0:  # attacked through the denoiser
        key["denoiser"] = model_fingerprint(denoiser)
    payload = json.dumps(
        key
        | {
            "spec": _spec_key(run.spec),
            "algorithm": ALGORITHM_REVISION,
            "target": run.target,
            "restarts": run.restarts,
            "restart_step_scales": RESTART_STEP_SCALES if run.restarts else None,
            "items": [[it.source_seed, it.prompt] for it in items],
            "model": model_fingerprint(model_path),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def compute_attack(
    model: Any,
    run: AttackRun,
    items: Sequence[Any],
    config: EvalConfig,
    marker: str,
    broken: Callable[[np.ndarray, Sequence[Any]], np.ndarray] | None = None,
) -> AttackRun:
    """Run (or load a saved copy of) one attack over the items, batch by batch.

    `broken(images, items)` says which adversarial inputs already fool the undefended model;
    it is needed for `run.restarts`.
    """
    if run.spec.norm != "linf":
        # Their float images are off the uint8 grid the replay path (and the server) reads.
        raise ValueError(
            f"{run.name}: only L-inf attacks are saved and replayed, got norm {run.spec.norm!r}"
            " (L2 attacks return float pixels; see smoothguard.evaluation.certified)"
        )
    folder = config.out / "attacks" / run.name
    through = getattr(config, "denoiser", None) if run.spec.eot_samples > 0 else None
    fingerprint = _fingerprint(run, items, config.model_path, through)
    saved = folder / "images.npz"
    if saved.exists():
        data = np.load(saved)
        if str(data["fingerprint"]) == fingerprint:
            run.images, run.seconds = data["images"], float(data["seconds"])
            return run
    if run.restarts and broken is None:
        raise ValueError(f"{run.name}: restarts need a way to tell which inputs are broken")
    images = np.stack([it.media for it in items])
    prompts = [it.prompt for it in items]
    if run.target == "flip":
        push, pull = [opposite(it.answer) for it in items], [it.answer for it in items]
    else:
        push, pull = [marker] * len(items), None
    batch = len(items) if run.spec.universal else config.batch_size
    denoiser = copy_denoiser(config, model) if through is not None else None
    denoise = None if denoiser is None else denoiser.normalised
    started = time.perf_counter()

    def attack(index: np.ndarray, spec: AttackSpec, bar: Any) -> np.ndarray:
        out = []
        for lo in range(0, len(index), batch):
            part = index[lo : lo + batch]
            out.append(
                pgd(
                    model,
                    images[part],
                    [prompts[i] for i in part],
                    push=[push[i] for i in part],
                    pull=None if pull is None else [pull[i] for i in part],
                    spec=spec,
                    progress=bar.update,
                    denoise=denoise,
                )
            )
        return np.concatenate(out)

    everything = np.arange(len(items))
    total = run.spec.steps * -(-len(items) // batch)
    with tqdm(total=total, desc=f"attack {run.name}", unit="step", leave=False) as bar:
        adversarial = attack(everything, run.spec, bar)
    restarted: list[dict[str, int]] = []
    if run.restarts:
        assert broken is not None
        done = np.asarray(broken(adversarial, items), dtype=bool)
        for restart in range(1, run.restarts + 1):
            left = everything[~done]
            if not len(left):
                break
            scale = RESTART_STEP_SCALES[(restart - 1) % len(RESTART_STEP_SCALES)]
            spec = dataclasses.replace(
                run.spec, seed=run.spec.seed + restart, step_size=run.spec.alpha * scale
            )
            total = spec.steps * -(-len(left) // batch)
            with tqdm(total=total, desc=f"{run.name} restart {restart}", leave=False) as bar:
                retry = attack(left, spec, bar)
            now = np.asarray(broken(retry, [items[i] for i in left]), dtype=bool)
            adversarial[left[now]] = retry[now]
            done[left[now]] = True
            restarted.append(
                {
                    "restart": restart,
                    "step_scale": scale,
                    "tried": len(left),
                    "broken": int(now.sum()),
                }
            )
    run.images, run.seconds = adversarial, time.perf_counter() - started
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(saved, images=run.images, fingerprint=fingerprint, seconds=run.seconds)
    manifest = {
        "attack": run.name,
        "task": run.task,
        "target": run.target,
        "spec": dataclasses.asdict(run.spec),
        "restarts": restarted,
        "fingerprint": fingerprint,
        "items": [
            {"scene_seed": it.source_seed, "prompt": it.prompt, "gold": it.answer} for it in items
        ],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return run


def saved_config(eval_dir: Path) -> dict[str, Any]:
    """The settings an evaluation run saved; ValueError when the folder holds no run."""
    if not (eval_dir / "results.json").is_file() or not (eval_dir / "attacks").is_dir():
        raise ValueError(
            f"{eval_dir} holds no evaluation (results.json and attacks/); make one with "
            f"python -m smoothguard.evaluation --out {eval_dir}"
        )
    return dict(json.loads((eval_dir / "results.json").read_text())["config"])


def saved_attacks(eval_dir: Path, *, eot: bool = True) -> list[AttackRun]:
    """The adversarial images an evaluation run saved, by attack (EOT ones only if `eot`),
    for the diagnostics that replay them (benchmarks/reference_transform.py, patch_shift.py)."""
    runs = []
    for folder in sorted((eval_dir / "attacks").iterdir()):
        manifest = json.loads((folder / "manifest.json").read_text())
        spec = AttackSpec(**manifest["spec"])
        if spec.norm != "linf":
            raise ValueError(f"{folder}: saved attacks are L-inf only, got norm {spec.norm!r}")
        if spec.eot_samples and not eot:
            continue
        images = np.load(folder / "images.npz")["images"]
        runs.append(
            AttackRun(manifest["attack"], manifest["task"], spec, manifest["target"], images=images)
        )
    return runs
