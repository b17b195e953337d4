"""Data sets, vocabulary and batching."""
