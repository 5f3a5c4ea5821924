"""The grammar of the spec language, package data of archdsl (read with importlib.resources)."""
