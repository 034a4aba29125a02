"""HTTP layer: handlers grouped by resource, the error middleware, and file serving."""
