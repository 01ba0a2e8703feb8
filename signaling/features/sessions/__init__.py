"""Sessions: what happens to a user's open sockets, on every node, when their account changes."""
