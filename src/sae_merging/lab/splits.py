"""Deterministic assignment of generated items to splits by a hash of their content."""

from __future__ import annotations

import zlib

# Shares of the item space: the rest is training data.
TEST_SHARE = 0.15
OPT_SHARE = 0.15


def split_of(key: object) -> str:
    """'test', 'opt' or 'train' for an item, from a process-independent hash of `repr(key)`."""
    bucket = zlib.crc32(repr(key).encode()) % 1000 / 1000
    if bucket < TEST_SHARE:
        return "test"
    if bucket < TEST_SHARE + OPT_SHARE:
        return "opt"
    return "train"
