"""Leaderboards computed from a results database."""
