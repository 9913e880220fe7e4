"""build/check_ensemble.py finds broken hand-offs between ensemble steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from check_ensemble import check_repository
from render import render


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return render("cpu", tmp_path / "repo")


def edit(repo: Path, model: str, old: str, new: str) -> None:
    path = repo / model / "config.pbtxt"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_rendered_cpu_repository_is_consistent(repo: Path) -> None:
    assert check_repository(repo) == []


@pytest.mark.parametrize(
    ("model", "old", "new", "expected"),
    [
        ("aggregate", '"EMBEDDINGS" data_type: TYPE_FP32', '"EMBEDDINGS" data_type: TYPE_FP16',
         "wants TYPE_FP16"),
        ("generate", 'name: "CANDIDATES" data_type: TYPE_STRING dims: [ -1, 1 ]',
         'name: "CANDIDATES" data_type: TYPE_STRING dims: [ -1 ]', "shape"),
        ("smoothguard", 'input_map { key: "TEXT" value: "candidates" }',
         'input_map { key: "TEXT" value: "candidatez" }', "neither an ensemble input"),
        ("smoothguard", 'output_map { key: "TIE" value: "TIE" }', "", "'TIE' is never produced"),
        ("smoothguard", 'model_name: "aggregate"', 'model_name: "aggregator"', "no model"),
        ("noise", '{ name: "PROMPT" data_type: TYPE_STRING dims: [ 1 ] optional: true }',
         '{ name: "PROMPT" data_type: TYPE_STRING dims: [ 1 ] optional: true },\n'
         '  { name: "EXTRA" data_type: TYPE_FP32 dims: [ 1 ] }', "'EXTRA' is not fed"),
    ],
)  # fmt: skip
def test_breakage_is_reported(repo: Path, model: str, old: str, new: str, expected: str) -> None:
    edit(repo, model, old, new)
    problems = check_repository(repo)
    assert any(expected in p for p in problems), problems
