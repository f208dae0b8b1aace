"""Results: the on-disk format (docs/FORMAT.md), storage, the run lock and the reduce."""
