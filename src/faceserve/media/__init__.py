"""Photos as files and bytes: the storage layout, image stores (files or Postgres), decoding, renditions."""
