"""Corpora, splits, tokenizer training and batching of segments."""
