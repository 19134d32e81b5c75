"""Evaluation: C3 zero-shot accuracy (reference scoring) and WikiText-2 perplexity (mindformers method)."""
