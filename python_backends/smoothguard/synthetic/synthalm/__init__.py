"""SynthALM: the project's default audio-language model, a small Qwen2-Audio trained here."""
