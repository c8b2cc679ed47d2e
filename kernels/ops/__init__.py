"""The ops, one package each, every one laid out alike (docs/design.md, "Layout of an op")."""
