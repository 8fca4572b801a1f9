"""Shared test tools: exact references (Gaussian data), host loading, server client."""
