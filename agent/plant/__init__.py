"""The plant side: what subscribers run to see every node (harken watch)."""
