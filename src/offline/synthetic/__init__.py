"""The synthetic CIRR-format benchmark: scenes and edits, caption grammar, rendering, writer."""
