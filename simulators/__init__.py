"""posmon simulators."""
