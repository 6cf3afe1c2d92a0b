"""Serve a trained run (or the fold ensemble of a CV folder) over HTTP: JSON API and a web page."""
