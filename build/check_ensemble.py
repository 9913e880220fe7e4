"""Check that a rendered repository's ensembles chain consistently, without starting Triton.

    python build/check_ensemble.py var/repo/cpu

Triton only finds a broken tensor hand-off (a misspelt name, an FP16 output feeding an FP32
input, a missing batch dimension) when it loads, on the target machine; for the gpu profile
that is a machine we may not have. This checks every ensemble step against the configs of the
models it calls: names, dtypes, shapes (with the batch dimension of batching models), required
inputs fed, every ensemble output produced, and batch sizes that fit.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from render import parse_model_config


@dataclass(frozen=True)
class TensorSpec:
    dtype: int
    dims: tuple[int, ...]
    optional: bool = False


def _full_shape(dims: list[int] | tuple[int, ...], max_batch_size: int) -> tuple[int, ...]:
    """The shape a tensor has on the wire: batching models get a leading batch dimension."""
    return ((-1,) if max_batch_size > 0 else ()) + tuple(dims)


def _compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def load_repository(repo: Path) -> dict[str, Any]:
    configs = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        config = parse_model_config(path.read_text(), path)
        configs[config.name or path.parent.name] = config
    return configs


def _specs(tensors: Any, max_batch_size: int) -> dict[str, TensorSpec]:
    return {
        t.name: TensorSpec(
            t.data_type, _full_shape(t.dims, max_batch_size), getattr(t, "optional", False)
        )
        for t in tensors
    }


def check_ensemble(name: str, configs: dict[str, Any]) -> list[str]:
    from tritonclient.grpc import model_config_pb2

    dtype_name = model_config_pb2.DataType.Name
    ensemble = configs[name]
    problems: list[str] = []
    available = _specs(ensemble.input, ensemble.max_batch_size)
    for index, step in enumerate(ensemble.ensemble_scheduling.step):
        where = f"{name} step {index} ({step.model_name})"
        model = configs.get(step.model_name)
        if model is None:
            problems.append(f"{where}: no model {step.model_name!r} in the repository")
            continue
        if model.max_batch_size < ensemble.max_batch_size:
            problems.append(
                f"{where}: max_batch_size {model.max_batch_size} < the ensemble's "
                f"{ensemble.max_batch_size}"
            )
        inputs = _specs(model.input, model.max_batch_size)
        outputs = _specs(model.output, model.max_batch_size)
        for key, value in step.input_map.items():
            if key not in inputs:
                problems.append(f"{where}: {step.model_name} has no input {key!r}")
                continue
            if value not in available:
                problems.append(f"{where}: {value!r} is neither an ensemble input nor made earlier")
                continue
            have, want = available[value], inputs[key]
            if have.dtype != want.dtype:
                problems.append(
                    f"{where}: {value!r} is {dtype_name(have.dtype)} but input {key!r} wants "
                    f"{dtype_name(want.dtype)}"
                )
            if not _compatible(have.dims, want.dims):
                problems.append(
                    f"{where}: {value!r} has shape {list(have.dims)} but input {key!r} wants "
                    f"{list(want.dims)}"
                )
            if have.optional and not want.optional:
                problems.append(f"{where}: optional {value!r} feeds required input {key!r}")
        for key, spec in inputs.items():
            if not spec.optional and key not in step.input_map:
                problems.append(f"{where}: required input {key!r} is not fed")
        for key, value in step.output_map.items():
            if key not in outputs:
                problems.append(f"{where}: {step.model_name} has no output {key!r}")
                continue
            if value in available:
                problems.append(f"{where}: {value!r} is produced twice")
            available[value] = outputs[key]
    for name_, spec in _specs(ensemble.output, ensemble.max_batch_size).items():
        made = available.get(name_)
        if made is None:
            problems.append(f"{name}: output {name_!r} is never produced")
        elif made.dtype != spec.dtype or not _compatible(made.dims, spec.dims):
            problems.append(
                f"{name}: output {name_!r} is made as {dtype_name(made.dtype)} "
                f"{list(made.dims)} but declared {dtype_name(spec.dtype)} {list(spec.dims)}"
            )
    return problems


def check_repository(repo: Path) -> list[str]:
    configs = load_repository(repo)
    problems = []
    for name, config in configs.items():
        if config.platform == "ensemble":
            problems += check_ensemble(name, configs)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path)
    args = parser.parse_args(argv)
    problems = check_repository(args.repository)
    for problem in problems:
        print(f"check_ensemble: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_ensemble: {args.repository}: every ensemble chains consistently")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
