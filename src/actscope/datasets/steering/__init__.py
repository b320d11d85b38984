"""Small behaviour datasets for steering (JSONL), written for actscope; see docs/steering.md."""
