"""Tokenizers, the preprocessing library, dataset builders and the micro-batch loader."""
