"""Reporting: tables that compare runs of several methods on one stream."""

from edgefilter.reporting import comparison

__all__ = ["comparison"]
