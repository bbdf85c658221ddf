"""Detectors: each maps a document (or a candidate against its query) to named evidence.

The poison model (:mod:`guarded_retriever._poison`) combines their strengths; each detector here is
a plain component with its own tests and a reason to hold beyond one data set.
"""

from __future__ import annotations

from ._views import decoded_blobs, skeleton
from .injection import InjectionDetector, InjectionVerdict

__all__ = ["InjectionDetector", "InjectionVerdict", "decoded_blobs", "skeleton"]
