"""benchmarks/families.py: what it reports about each family's input, and its usage errors
(the timed server runs are the benchmark's own, stored in docs/results/families)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from smoothguard.synthetic.families import SERVE_IMAGE_SIZE

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script(benchmark_script: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_script("families")


@pytest.mark.parametrize(
    ("name", "tokens", "size"),
    [("synthvlm", 64, [64, 64]), ("llava15", 576, [336, 336]), ("qwen2_5_vl", 16, [112, 112])],
)
def test_image_tokens_per_copy(
    script: ModuleType,
    family_checkpoint: Callable[[str], Path],
    name: str,
    tokens: int,
    size: list[int],
) -> None:
    path = REPO_ROOT / "models" / name if name == "synthvlm" else family_checkpoint(name)
    assert script._image_tokens(path, SERVE_IMAGE_SIZE.get(name)) == (tokens, size)


def test_zero_calls_is_a_usage_error(script: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        script.main(["--calls", "0", "--out", str(tmp_path)])
    assert info.value.code == 2
