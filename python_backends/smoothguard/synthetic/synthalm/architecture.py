"""The model's Hugging Face form: a small Qwen2-Audio (Whisper-style audio encoder + Qwen2
language model) and a Qwen2AudioProcessor (WhisperFeatureExtractor for 1 s clips, word-level
tokenizer, chat template), so AutoProcessor / AutoModelForMultimodalLM load it like a hub
checkpoint and the adapter (synthalm.model) needs nothing model-specific beyond the features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from smoothguard.synthetic.synthalm.tokenizer import AUDIO_BOS, AUDIO_EOS, AUDIO_TOKEN
from smoothguard.synthetic.synthaudio.clips import DURATION, SAMPLE_RATE

if TYPE_CHECKING:
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
    )

# Qwen2-Audio's template is ChatML; the shape kept here is LLaVA's (as in synthvlm) with
# Qwen2-Audio's audio markers, which the processor expands to one token per encoder frame.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'audio' %}"
    + AUDIO_BOS
    + AUDIO_TOKEN
    + AUDIO_EOS
    + " {% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class ModelConfig:
    """Sizes; the defaults are what ships (trained in about 10 min on 2 cores)."""

    sample_rate: int = SAMPLE_RATE
    seconds: int = int(DURATION)
    mel_bins: int = 64
    hop_length: int = 160
    n_fft: int = 400
    audio_width: int = 128
    audio_layers: int = 3
    audio_mlp: int = 256
    width: int = 128
    layers: int = 2
    mlp: int = 352
    heads: int = 4

    @property
    def frames(self) -> int:
        return self.seconds * self.sample_rate // self.hop_length

    @property
    def audio_tokens(self) -> int:
        """Encoder outputs per clip: conv stride 2, then average pooling by 2."""
        return ((self.frames - 1) // 2 + 1 - 2) // 2 + 1


def build_processor(
    tokenizer: PreTrainedTokenizerFast, config: ModelConfig = ModelConfig()
) -> Qwen2AudioProcessor:
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    features = WhisperFeatureExtractor(
        feature_size=config.mel_bins,
        sampling_rate=config.sample_rate,
        hop_length=config.hop_length,
        chunk_length=config.seconds,
        n_fft=config.n_fft,
    )
    return Qwen2AudioProcessor(
        feature_extractor=features,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        audio_token=AUDIO_TOKEN,
        audio_bos_token=AUDIO_BOS,
        audio_eos_token=AUDIO_EOS,
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast, config: ModelConfig = ModelConfig()
) -> Qwen2AudioForConditionalGeneration:
    """Randomly initialised; the caller seeds torch first (init is drawn from torch's RNG)."""
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2Config,
    )

    audio = Qwen2AudioEncoderConfig(
        num_mel_bins=config.mel_bins,
        encoder_layers=config.audio_layers,
        encoder_attention_heads=config.heads,
        encoder_ffn_dim=config.audio_mlp,
        d_model=config.audio_width,
        max_source_positions=config.frames // 2,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.width,
        intermediate_size=config.mlp,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    merged = Qwen2AudioConfig(
        audio_config=audio,
        text_config=text,
        audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    from transformers.models.whisper.modeling_whisper import sinusoids

    model = Qwen2AudioForConditionalGeneration(merged)
    # Whisper's fixed sinusoidal positions (Qwen2-Audio keeps them frozen but, built from a
    # config, starts them as small random numbers: almost no position signal).
    positions = model.model.audio_tower.embed_positions
    with torch.no_grad():
        positions.weight.copy_(sinusoids(*positions.weight.shape))
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    return model
