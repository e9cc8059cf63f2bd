"""The async primitives every part uses: backoff, periodic jobs, per-key locks, work on
threads (one each)."""
