"""Patching and circuit discovery: activation, path, attribution and edge patching, and circuits."""
