"""Streams: a performer's live show and its room (REST-managed; publishes lifecycle events to the room)."""
