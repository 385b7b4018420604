"""Readable names for results keys: `attnlab.present.catalogue` holds them (with units, directions and how
to read each); this module keeps the names pages have always imported."""

from __future__ import annotations

from attnlab.present.catalogue import LABELS, label

__all__ = ["LABELS", "label"]
