"""The collector side of dittohead: scan a folder, pack it, send it over SSH.

Imports dittohead.core only and must run on Windows.
"""
