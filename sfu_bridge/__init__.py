"""Media: the embedded aiortc relay, recording, and the external SFU adapter."""
