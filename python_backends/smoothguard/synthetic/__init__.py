"""Synthetic benchmarks (SynthPOPE images, SynthAudio clips) and the small default models
trained on them (SynthVLM, SynthALM), so the whole product runs and is tested without a hub."""
