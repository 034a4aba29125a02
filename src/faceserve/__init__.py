"""faceserve: find a person in a large photo collection by their face, and serve those photos fast."""

__version__ = "0.1.0"
