"""Text generation: sampling rules and incremental (KV-cache) decoding."""
