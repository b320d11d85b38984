"""Example datasets shipped with actscope as package data."""
