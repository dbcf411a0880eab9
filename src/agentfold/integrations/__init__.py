"""Integrations of agent frameworks with agentfold's runtime; each module needs its framework's extra installed."""
