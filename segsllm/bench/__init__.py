"""Metrics and benchmarks: bits/byte & perplexity, throughput, memory, compression."""
