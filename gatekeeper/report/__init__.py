"""Reports: read-only queries into plain data, and their text, JSON and CSV renderings."""
