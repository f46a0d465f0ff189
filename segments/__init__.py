"""Segments: JSON rules over the customer file, compiled to SQL; live counts, previews, exports."""
