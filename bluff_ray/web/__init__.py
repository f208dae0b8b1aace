"""Web edge: serving a results root with the viewer, and publishing it to object storage."""
