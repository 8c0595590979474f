"""Small shared helpers (atomic files, hashing, devices, seeding)."""

from .fileio import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "sha256_file"]
