"""Built-in label-set data (JSON files read by models.labels)."""
