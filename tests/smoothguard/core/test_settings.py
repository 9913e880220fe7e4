"""Defaults, limits and per-request option resolution."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smoothguard.core.settings import (
    DefenseSettings,
    InvalidRequest,
    RequestOptions,
    parse_options,
    resolve_options,
)


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


@pytest.mark.parametrize("value", ["true", "false"])
def test_removed_log_prompts_still_loads_with_a_warning(value: str) -> None:
    """Configs rendered before log_prompts went (it was never read) still start a server."""
    params = DefenseSettings(sigma=0.2).to_parameters()
    assert "log_prompts" not in params
    with pytest.warns(DeprecationWarning, match="'log_prompts' is deprecated and ignored"):
        settings = DefenseSettings.from_parameters(params | {"log_prompts": value})
    assert settings == DefenseSettings(sigma=0.2)
    assert "log_prompts" not in settings.to_parameters()
    with pytest.warns(DeprecationWarning, match="log_prompts"):
        assert DefenseSettings.from_profile({"sigma": 0.2, "log_prompts": True}) == settings


def test_bad_parameter_values_fail_loudly() -> None:
    with pytest.raises(ValueError):
        DefenseSettings.from_parameters({"clip": "perhaps"})
    with pytest.raises(ValueError):
        DefenseSettings(noise_unit="furlongs")  # type: ignore[arg-type]


def test_options_json_round_trip() -> None:
    options = resolve_options(DefenseSettings(), seed=3, return_candidates=True)
    assert RequestOptions.from_json(options.to_json()) == options


def test_options_json_is_parsed_strictly() -> None:
    """OPTIONS reach public steps: every key known, typed and bounded by the server's limits."""
    settings = DefenseSettings()
    good = resolve_options(settings, num_samples=4).to_json()
    assert parse_options(good, settings)[0].num_samples == 4
    assert parse_options(good.encode(), settings)[0] == RequestOptions.from_json(good)
    with_ticket = good[:-1] + ', "ticket": "abc"}'
    assert parse_options(with_ticket, settings, extra_keys=("ticket",))[1] == {"ticket": "abc"}
    cases = {
        with_ticket: "unknown key(s): 'ticket'",
        good.replace('"num_samples": 4', '"num_samples": 4000'): "an integer in [1, 64], got 4000",
        good.replace('"num_samples": 4', '"num_samples": 4.0'): "'num_samples' must be an integer",
        good.replace('"num_samples": 4', '"num_samples": true'): "'num_samples' must be an integer",
        good.replace('"num_samples": 4', '"num_samples": ' + "9" * 500): "'num_samples'",
        good.replace('"sigma": 0.15', '"sigma": 1e400'): "'sigma' must be a finite number",
        good.replace('"sigma": 0.15', '"sigma": 1' + "0" * 400): "'sigma' must be a finite",
        good.replace('"sigma": 0.15', '"sigma": Infinity'): "Infinity, which is not JSON",
        good.replace('"sigma": 0.15', '"sigma": "0.15"'): "'sigma' must be a number",
        good.replace('"seed": null', '"seed": 9223372036854775808'): "'seed' must be an integer in",
        good.replace('"policy": "answer"', '"policy": "yolo"'): "'policy' must be one of",
        good.replace('"return_candidates": false', '"return_candidates": "no"'): "a boolean",
        good.replace('"adaptive": false, ', ""): "lacks key(s): 'adaptive'",
        good[:-1] + ', "sigma": 0.2}': "key 'sigma' twice",
        "[" * 2000 + "]" * 2000: "not valid JSON",  # past the parser's recursion limit
        "x" * 5000: "longer than 4096 bytes",
        b"\xff\xfe": "not valid UTF-8",
        "null": "must be a JSON object",
    }  # fmt: skip
    for text, expected in cases.items():
        with pytest.raises(InvalidRequest, match="OPTIONS") as info:
            parse_options(text, settings)
        assert expected in str(info.value), (text[:60], str(info.value))


def test_options_bounds_follow_the_server() -> None:
    text = resolve_options(DefenseSettings(), seed=5, sigma=0.9).to_json()
    with pytest.raises(InvalidRequest, match="refuses seeds"):
        parse_options(text, DefenseSettings(allow_seed=False))
    with pytest.raises(InvalidRequest, match="'sigma'"):
        parse_options(text, DefenseSettings(sigma_max=0.5, sigma=0.1))
    assert parse_options(text, DefenseSettings(sigma_max=0.5, sigma=0.1), sigma_max=2.0)[0].sigma


def test_every_option_field_has_a_json_kind() -> None:
    """parse_options must know every RequestOptions field (a new one would be refused)."""
    from dataclasses import fields

    from smoothguard.core.settings import _CERTIFY_KINDS, _OPTION_KINDS

    assert [f.name for f in fields(RequestOptions)] == [*_OPTION_KINDS, *_CERTIFY_KINDS]


# ------------------------------------------------------------------ certified mode


def test_certify_settings_default_and_validate() -> None:
    s = DefenseSettings()
    assert (s.allow_certify, s.certify_selection_draws, s.certify_estimation_draws) == (
        True,
        10,
        100,
    )
    assert s.certify_alpha == 0.001 and s.certify_max_draws == 256 and s.certify_draws == 111
    again = DefenseSettings.from_parameters(
        DefenseSettings(allow_certify=False, certify_alpha=0.01).to_parameters()
    )
    assert again.allow_certify is False and again.certify_alpha == 0.01
    bad = [
        ({"certify_selection_draws": 0}, "certify_selection_draws"),
        ({"certify_estimation_draws": 0}, "certify_estimation_draws"),
        ({"certify_alpha": 0.0}, "certify_alpha"),
        ({"certify_alpha": 1.0}, "certify_alpha"),
        ({"certify_estimation_draws": 300}, "over certify_max_draws 256"),
        ({"certify_max_draws": 100}, "111 is over certify_max_draws 100"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            DefenseSettings(**kwargs)


def test_certify_request_draws_the_servers_copies() -> None:
    s = DefenseSettings()
    options = resolve_options(s, certify=True, seed=4)
    assert options.certify and options.num_samples == 111 > s.num_samples_max
    assert options.answer_set == ("yes", "no") and not options.adaptive
    # NUM_SAMPLES may name the same number; the server's adaptive default does not apply.
    assert resolve_options(s, certify=True, num_samples=111) == resolve_options(s, certify=True)
    assert not resolve_options(DefenseSettings(adaptive=True), certify=True).adaptive
    words = resolve_options(s, certify=True, answer_set=[" Red", "GREEN", "blue2"]).answer_set
    assert words == ("red", "green", "blue2")
    small = DefenseSettings(certify_selection_draws=2, certify_estimation_draws=5)
    assert resolve_options(small, certify=True).num_samples == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"adaptive": True}, "ADAPTIVE cannot be combined with CERTIFY"),
        ({"num_samples": 10}, "NUM_SAMPLES must be left out with CERTIFY, or be 111"),
        ({"num_samples": 112}, "got 112"),
        ({"sigma": 0.0}, "SIGMA must be above 0 with CERTIFY"),
        ({"answer_set": []}, "ANSWER_SET must hold 1 to 16 answers, got 0"),
        ({"answer_set": ["w"] * 17}, "ANSWER_SET must hold 1 to 16 answers, got 17"),
        ({"answer_set": ["yes", "Yes"]}, "ANSWER_SET names 'yes' twice"),
        ({"answer_set": ["two cats"]}, "single words"),
        ({"answer_set": ["sí"]}, "single words"),
        ({"answer_set": ["a" * 33]}, "at most 32 characters"),
        ({"answer_set": [""]}, "single words"),
    ],
)
def test_certify_requests_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=r"ANSWER_SET|ADAPTIVE|NUM_SAMPLES|SIGMA") as info:
        resolve_options(DefenseSettings(), certify=True, **kwargs)
    assert message in str(info.value), str(info.value)


def test_certify_can_be_turned_off_and_answer_set_needs_it() -> None:
    with pytest.raises(InvalidRequest, match=r"CERTIFY is refused by this server \(allow_certify"):
        resolve_options(DefenseSettings(allow_certify=False), certify=True)
    assert not resolve_options(DefenseSettings(allow_certify=False), certify=False).certify
    with pytest.raises(InvalidRequest, match="ANSWER_SET is only used with CERTIFY=true"):
        resolve_options(DefenseSettings(), answer_set=["yes", "no"])
    with pytest.raises(InvalidRequest, match="ANSWER_SET"):
        resolve_options(DefenseSettings(), certify=False, answer_set=["yes"])


def test_other_requests_options_are_unchanged_by_certified_mode() -> None:
    """No certify keys in a plain request's OPTIONS: tickets and cache keys stay as they were."""
    text = resolve_options(DefenseSettings(), seed=3).to_json()
    assert text == (
        '{"adaptive": false, "max_new_tokens": 32, "num_samples": 10, "policy": "answer", '
        '"return_candidates": false, "seed": 3, "sigma": 0.15}'
    )


def test_certify_options_round_trip_and_are_parsed_strictly() -> None:
    s = DefenseSettings()
    options = resolve_options(s, certify=True, seed=3, answer_set=["cat", "dog"])
    text = options.to_json()
    assert '"answer_set": ["cat", "dog"]' in text and '"certify": true' in text
    assert RequestOptions.from_json(text) == options
    assert parse_options(text, s)[0] == options
    plain = resolve_options(s, num_samples=4).to_json()
    assert parse_options(plain[:-1] + ', "certify": false}', s)[0].certify is False
    cases = {
        text.replace('"num_samples": 111', '"num_samples": 10'): "'num_samples' must be 111",
        text.replace('"num_samples": 111', '"num_samples": 300'): "an integer in [1, 256]",
        text.replace('"adaptive": false', '"adaptive": true'): "'adaptive' must be false",
        text.replace('"sigma": 0.15', '"sigma": 0'): "'sigma' must be above 0",
        text.replace('"certify": true', '"certify": 1'): "'certify' must be a boolean",
        text.replace('["cat", "dog"]', '"cat"'): "'answer_set' must be a list of words",
        text.replace('["cat", "dog"]', '["cat", 2]'): "'answer_set' must be a list of words",
        text.replace('["cat", "dog"]', '["Cat", "dog"]'): "lower-case words",
        text.replace('["cat", "dog"]', '[]'): "'answer_set' must hold 1 to 16",
        text.replace('["cat", "dog"]', '["a b"]'): "single words",
        text.replace('"answer_set": ["cat", "dog"], ', ""): "lacks key(s): 'answer_set'",
        text.replace('"certify": true', '"certify": false'): "'answer_set' must be absent",
        plain[:-1] + ', "answer_set": ["yes"]}': "'answer_set' must be absent",
        plain.replace('"num_samples": 4', '"num_samples": 111'): "an integer in [1, 64], got 111",
    }  # fmt: skip
    for bad, expected in cases.items():
        with pytest.raises(InvalidRequest, match="OPTIONS") as info:
            parse_options(bad, s)
        assert expected in str(info.value), (bad, str(info.value))
    with pytest.raises(InvalidRequest, match=r"refuses certify \(allow_certify=false\)"):
        parse_options(text, DefenseSettings(allow_certify=False))
    with pytest.raises(InvalidRequest, match="'num_samples' must be 8"):
        parse_options(text, DefenseSettings(certify_selection_draws=2, certify_estimation_draws=5))
