"""Public side: forms, popups, double opt-in, unsubscribe, preferences (issue 3: not built yet)."""
