from archdsl.cli import entry

entry()
