"""Sigma schedules: pure functions returning descending sigmas that end in 0."""
