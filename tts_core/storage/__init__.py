"""Persistence on any filesystem pyarrow knows: the blob store and the two record codecs."""
