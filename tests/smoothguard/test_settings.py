"""Defaults, limits and per-request option resolution."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smoothguard.settings import DefenseSettings, InvalidRequest, RequestOptions, resolve_options


def test_defaults_match_the_paper() -> None:
    options = resolve_options(DefenseSettings())
    assert (options.sigma, options.num_samples, options.seed) == (0.15, 10, None)
    assert options.policy == "answer" and not options.return_candidates


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_sigma_outside_limits_is_rejected(sigma: float) -> None:
    settings = DefenseSettings()
    if math.isfinite(sigma) and 0 <= sigma <= settings.sigma_max:
        assert resolve_options(settings, sigma=sigma).sigma == sigma
    else:
        with pytest.raises(InvalidRequest, match="SIGMA"):
            resolve_options(settings, sigma=sigma)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, "NUM_SAMPLES"),
        ({"num_samples": 65}, "NUM_SAMPLES"),
        ({"max_new_tokens": 0}, "MAX_NEW_TOKENS"),
        ({"max_new_tokens": 10_000}, "MAX_NEW_TOKENS"),
        ({"policy": "maybe"}, "POLICY"),
        ({"seed": -1}, "SEED"),
    ],
)
def test_out_of_range_options(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        resolve_options(DefenseSettings(), **kwargs)


def test_seed_can_be_forbidden() -> None:
    with pytest.raises(InvalidRequest, match="refused"):
        resolve_options(DefenseSettings(allow_seed=False), seed=1)
    assert resolve_options(DefenseSettings(allow_seed=False)).seed is None


def test_parameters_round_trip() -> None:
    settings = DefenseSettings(sigma=0.2, allow_seed=False, refusal_text='say "no"')
    params = settings.to_parameters() | {"mllm_path": "/m"}
    again = DefenseSettings.from_parameters(params)
    assert again.sigma == 0.2 and again.allow_seed is False
    assert again.refusal_text == 'say "no"' and again.extra == {"mllm_path": "/m"}


def test_bad_parameter_values_fail_loudly() -> None:
    with pytest.raises(ValueError):
        DefenseSettings.from_parameters({"clip": "perhaps"})
    with pytest.raises(ValueError):
        DefenseSettings(noise_unit="furlongs")  # type: ignore[arg-type]


def test_options_json_round_trip() -> None:
    options = resolve_options(DefenseSettings(), seed=3, return_candidates=True)
    assert RequestOptions.from_json(options.to_json()) == options
