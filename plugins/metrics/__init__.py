"""Built-in metric plugins: the measurements of the five source papers (arena.metric)."""
