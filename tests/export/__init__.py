"""Tests of the export package (danet-export)."""
