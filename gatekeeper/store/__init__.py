"""The SQLite log: schema and migrations, and the write-behind recorder (the daemon's Sink)."""
