"""build/render.py: strict templates, overrides, and configs that Triton can parse."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from render import RenderError, parse_model_config, render, render_template

MODELS = {"smoothguard", "noise", "generate", "embedder", "aggregate", "mllm"}
AUDIO_MODELS = {"smoothguard_audio", "noise_audio", "generate_audio", "mllm_audio"}


def test_cpu_profile_renders_every_model(tmp_path: Path) -> None:
    out = render("cpu", tmp_path / "repo")
    assert {p.name for p in out.iterdir() if p.is_dir()} == MODELS | AUDIO_MODELS
    for name in MODELS | AUDIO_MODELS:
        config = parse_model_config((out / name / "config.pbtxt").read_text(), out / name)
        assert config.name == name
        assert "${" not in (out / name / "config.pbtxt").read_text()
    assert (out / "noise" / "1" / "model.py").exists()


def test_audio_models_share_the_image_models_code(tmp_path: Path) -> None:
    """generate_audio and mllm_audio are the generate and mllm code (linked in the templates,
    copied as files into the repository) configured for audio, not second implementations."""
    out = render("cpu", tmp_path / "repo", ["defense.audio_sigma=0.5"])
    for audio, image in (("generate_audio", "generate"), ("mllm_audio", "mllm")):
        copied = out / audio / "1" / "model.py"
        assert not copied.is_symlink()
        assert copied.read_text() == (out / image / "1" / "model.py").read_text()
    mllm = parse_model_config((out / "mllm_audio" / "config.pbtxt").read_text(), out)
    assert mllm.parameters["modality"].string_value == "audio"
    assert mllm.parameters["model_path"].string_value == "model_path"
    assert (out / "mllm_audio" / "model_path").resolve().name == "synthalm"
    noise = parse_model_config((out / "noise_audio" / "config.pbtxt").read_text(), out)
    assert noise.parameters["audio_sigma"].string_value == "0.5"


def test_profile_without_the_audio_overlay_serves_images_only(tmp_path: Path) -> None:
    out = render("cpu", tmp_path / "repo", ["overlays=[]"])
    assert {p.name for p in out.iterdir() if p.is_dir()} == MODELS


def test_defense_settings_reach_the_steps(tmp_path: Path) -> None:
    out = render("cpu", tmp_path / "repo", ["defense.num_samples=16", "defense.allow_seed=false"])
    config = parse_model_config((out / "noise" / "config.pbtxt").read_text(), out)
    assert config.parameters["num_samples"].string_value == "16"
    assert config.parameters["allow_seed"].string_value == "false"


def test_a_profile_naming_a_removed_setting_still_renders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """defense.log_prompts was never read: an older profile that sets it renders with a
    DeprecationWarning, and no rendered config carries it."""
    import render as render_module

    profiles = yaml.safe_load(render_module.PROFILES.read_text())
    profiles["cpu"]["defense"]["log_prompts"] = True
    older = tmp_path / "profiles.yaml"
    older.write_text(yaml.safe_dump(profiles))
    monkeypatch.setattr(render_module, "PROFILES", older)
    with pytest.warns(DeprecationWarning, match="log_prompts"):
        out = render("cpu", tmp_path / "repo")
    configs = list(out.glob("*/config.pbtxt"))
    assert configs and not any("log_prompts" in c.read_text() for c in configs)


@pytest.mark.parametrize(
    ("overrides", "enabled"),
    [
        ([], False),  # off by default: every request would pay for hashing the copies
        (["steps.response_cache=true"], True),
        (["steps.response_cache=true", "defense.allow_seed=false"], False),  # nothing to hit
    ],
)
def test_generate_response_cache(tmp_path: Path, overrides: list[str], enabled: bool) -> None:
    out = render("cpu", tmp_path / "repo", overrides)
    for name in ("generate", "generate_audio"):
        config = parse_model_config((out / name / "config.pbtxt").read_text(), out)
        assert config.response_cache.enable is enabled


def test_unfilled_placeholder_is_an_error() -> None:
    with pytest.raises(RenderError, match="nope"):
        render_template("name: ${nope}", {}, Path("x.tmpl"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("defense.no_such=1", "no setting"),
        ("nosection.x=1", "no section"),
        ("steps.response_cache=maybe", "response_cache must be true or false"),
        ("defense.num_samples", "KEY=VALUE"),
        ("mllm.dtype=fp8", "mllm.dtype must be one of"),
        ("denoiser.model_path=models/nope", "no denoiser checkpoint"),
        ("mllm.threads_alone=-1", r"mllm.threads_alone must be a whole number >= 0"),
        ("mllm.threads_alone=two", r"mllm.threads_alone must be a whole number >= 0"),
        ("mllm.threads_alone_min_rows=0", r"mllm.threads_alone_min_rows must be .* >= 1"),
        ("audio.threads=1.5", r"audio.threads must be a whole number >= 0"),
    ],
)
def test_bad_overrides_are_errors(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render("cpu", tmp_path / "repo", [override])


def test_out_of_range_default_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_samples"):
        render("cpu", tmp_path / "repo", ["defense.num_samples=0"])


def test_embedder_batch_must_fit_num_samples(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="max_batch_size"):
        render("cpu", tmp_path / "repo", ["embedder.max_batch_size=8"])


def test_embedder_batch_must_fit_a_certify_request_while_certify_is_allowed(tmp_path: Path) -> None:
    """A certify request sends 1 + 10 + 100 candidates to the embedder in one batch."""
    with pytest.raises(RenderError, match=r"embedder.max_batch_size 64 < 111"):
        render("cpu", tmp_path / "a", ["embedder.max_batch_size=64"])
    render("cpu", tmp_path / "b", ["embedder.max_batch_size=64", "defense.allow_certify=false"])
    with pytest.raises(ValueError, match="over certify_max_draws 256"):
        render("cpu", tmp_path / "c", ["defense.certify_estimation_draws=300"])


def test_aggregate_reads_the_mllm_processor_for_the_certified_radius(tmp_path: Path) -> None:
    out = render("cpu", tmp_path / "repo")
    config = (out / "aggregate" / "config.pbtxt").read_text()
    assert 'key: "mllm_path" value: { string_value: "mllm_path" }' in config  # no host path
    assert (out / "aggregate" / "mllm_path" / "processor_config.json").is_file()


def test_the_mllm_resolution_and_dtype_reach_every_step_that_reads_pixels(tmp_path: Path) -> None:
    """mllm.image_size (for checkpoints without a resolution of their own) must be the same in
    the noise step (which draws at it), generate (which checks it) and mllm (which loads with
    it); mllm.dtype only where the weights are loaded."""
    out = render("cpu", tmp_path / "repo", ["mllm.image_size=448", "mllm.dtype=bfloat16"])
    for name in ("noise", "generate", "mllm"):
        config = parse_model_config((out / name / "config.pbtxt").read_text(), out)
        assert config.parameters["image_size"].string_value == "448", name
    mllm = parse_model_config((out / "mllm" / "config.pbtxt").read_text(), out)
    assert mllm.parameters["dtype"].string_value == "bfloat16"
    default = render("cpu", tmp_path / "default", ["overlays=[]"])
    mllm = parse_model_config((default / "mllm" / "config.pbtxt").read_text(), default)
    assert mllm.parameters["image_size"].string_value == "0"
    assert mllm.parameters["dtype"].string_value == "float32"


def test_a_denoiser_puts_the_denoise_step_between_noise_and_generate(tmp_path: Path) -> None:
    plain = render("cpu", tmp_path / "plain", ["overlays=[]"])
    assert not (plain / "denoise").exists()
    ensemble = parse_model_config((plain / "smoothguard" / "config.pbtxt").read_text(), plain)
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "noise", "generate", "embedder", "aggregate"
    ]  # fmt: skip
    out = render(
        "cpu", tmp_path / "denoised", ["overlays=[]", "denoiser.model_path=models/denoiser"]
    )
    ensemble = parse_model_config((out / "smoothguard" / "config.pbtxt").read_text(), out)
    steps = {s.model_name: s for s in ensemble.ensemble_scheduling.step}
    assert list(steps) == ["noise", "denoise", "generate", "embedder", "aggregate"]
    assert steps["denoise"].input_map["PIXEL_VALUES"] == steps["noise"].output_map["PIXEL_VALUES"]
    assert (
        steps["generate"].input_map["PIXEL_VALUES"] == steps["denoise"].output_map["PIXEL_VALUES"]
    )
    denoise = parse_model_config((out / "denoise" / "config.pbtxt").read_text(), out)
    assert denoise.parameters["model_path"].string_value == "model_path"  # no host path
    assert (out / "denoise" / "model_path" / "config.json").is_file()
    assert (out / "denoise" / "1" / "model.py").is_file()


def test_adaptive_first_rounds_are_shipped_on_cpu_without_a_denoiser(tmp_path: Path) -> None:
    """The noise step and generate must agree: both read the same rendered value."""

    def shipped(out: Path) -> set[str]:
        values = set()
        for model in ("noise", "generate"):
            config = parse_model_config((out / model / "config.pbtxt").read_text(), out)
            values.add(config.parameters["adaptive_first_round_only"].string_value)
        return values

    assert shipped(render("cpu", tmp_path / "plain", ["overlays=[]"])) == {"true"}
    denoised = ["overlays=[]", "denoiser.model_path=models/denoiser"]
    assert shipped(render("cpu", tmp_path / "denoised", denoised)) == {"false"}


def test_the_single_model_overlay_serves_the_endpoint_beside_the_ensemble(tmp_path: Path) -> None:
    out = render("cpu", tmp_path / "bls", ["overlays=[bls]"])
    ensemble = parse_model_config((out / "smoothguard" / "config.pbtxt").read_text(), out)
    single = parse_model_config((out / "smoothguard_bls" / "config.pbtxt").read_text(), out)
    assert [i.name for i in single.input] == [i.name for i in ensemble.input]
    assert [o.name for o in single.output] == [o.name for o in ensemble.output]
    with pytest.raises(RenderError, match="no denoise step"):
        render("cpu", tmp_path / "x", ["overlays=[bls]", "denoiser.model_path=models/denoiser"])


def test_the_robust_profile_is_the_cpu_profile_with_pixel_noise(tmp_path: Path) -> None:
    """docs/defense_modes.md's recommendation: only the noise differs from cpu."""
    robust = render("robust", tmp_path / "robust", ["overlays=[]"])
    cpu = render("cpu", tmp_path / "cpu", ["overlays=[]"])
    noise = {
        name: parse_model_config((repo / "noise" / "config.pbtxt").read_text(), repo).parameters
        for name, repo in (("robust", robust), ("cpu", cpu))
    }
    assert (noise["robust"]["noise_unit"].string_value, noise["robust"]["sigma"].string_value) == (
        "pixel",
        "0.5",
    )
    differ = {k for k in noise["cpu"] if noise["cpu"][k] != noise["robust"][k]}
    assert differ == {"noise_unit", "sigma"}


def test_unknown_profile(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="unknown profile"):
        render("tpu", tmp_path / "repo")


def test_every_model_has_a_version_folder(tmp_path: Path) -> None:
    out = render("cpu", tmp_path / "repo")
    assert all((out / name / "1").is_dir() for name in MODELS)


def test_served_configs_name_no_host_paths(tmp_path: Path) -> None:
    """Any client may read a model's config: the weights' host paths become links inside the
    model folder, and the config names the link."""
    repo = render("cpu", tmp_path / "repo")
    for config in repo.glob("*/config.pbtxt"):
        text = config.read_text()
        assert str(Path(__file__).resolve().parents[2]) not in text, config
        assert str(tmp_path) not in text, config
    link = repo / "mllm" / "model_path"
    assert 'string_value: "model_path"' in (repo / "mllm" / "config.pbtxt").read_text()
    assert link.is_symlink() and (link / "config.json").exists()
    assert (repo / "noise" / "mllm_path").resolve() == link.resolve()
