"""What the service does, below HTTP: the open services, face sessions, ingest, search, import, URL signing."""
