"""Campaigns, deliveries, rendering and channels (issue 4: not built yet)."""
