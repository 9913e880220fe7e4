"""SynthVLM: the project's default vision-language model, a small LLaVA trained here."""
