"""Model adapters: the MLLM, the sentence encoder, image preprocessing and TensorRT-LLM helpers
that turn checkpoints into the answerer and embedder the defense core calls."""
