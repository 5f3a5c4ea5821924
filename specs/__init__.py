"""The bundled specs (``archdsl list``), package data of archdsl (read with importlib.resources)."""
