"""Attack-and-evaluate toolkit: what the defense buys (ASR) and what it costs (utility, calls)."""
