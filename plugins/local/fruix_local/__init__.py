"""Local executor (stub; being written)."""
