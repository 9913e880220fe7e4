"""Client library for the SmoothGuard endpoint served by Triton (needs no server-side code)."""

from smoothguard_client.audio import AudioLike, AudioPayload, load_audio
from smoothguard_client.client import (
    DEFAULT_URL,
    POLICIES,
    AsyncSmoothGuardClient,
    RetryPolicy,
    SmoothGuardClient,
    build_ask_audio_inputs,
    build_ask_inputs,
    build_embed_inputs,
    build_option_inputs,
    build_undefended_inputs,
)
from smoothguard_client.images import ImageLike, ImagePayload, load_image
from smoothguard_client.result import DefendedAnswer, SmoothGuardError

__all__ = [
    "DEFAULT_URL",
    "POLICIES",
    "AsyncSmoothGuardClient",
    "AudioLike",
    "AudioPayload",
    "DefendedAnswer",
    "ImageLike",
    "ImagePayload",
    "RetryPolicy",
    "SmoothGuardClient",
    "SmoothGuardError",
    "build_ask_audio_inputs",
    "build_ask_inputs",
    "build_embed_inputs",
    "build_option_inputs",
    "build_undefended_inputs",
    "load_audio",
    "load_image",
]
