"""Readers and writers of the formats crowdseg takes and emits."""
