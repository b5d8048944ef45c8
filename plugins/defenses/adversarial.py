"""(work in progress: this plugin family is being written)."""
