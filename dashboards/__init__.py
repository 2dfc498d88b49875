"""posmon dashboards."""
