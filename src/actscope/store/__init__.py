"""Activation store: sites of a model over a corpus, cached to safetensors shards on disk.

``build_store`` writes (resumable, checksummed, disk space checked first);
``ActivationStore`` reads (memory-mapped, verified, seeded shuffled batches).
"""

from actscope.store.format import STORE_DTYPES, MappedShard, StoreError, shard_name
from actscope.store.plan import ShardPlan, StorePlan, check_disk, cut_shards, site_dims
from actscope.store.reader import ActivationStore, StoreBatch
from actscope.store.writer import build_store, read_sequences

__all__ = [
    "STORE_DTYPES",
    "ActivationStore",
    "MappedShard",
    "ShardPlan",
    "StoreBatch",
    "StoreError",
    "StorePlan",
    "build_store",
    "check_disk",
    "cut_shards",
    "read_sequences",
    "shard_name",
    "site_dims",
]
