"""Run: configuration, image sources, the plan, the Ray actors and the driver."""
